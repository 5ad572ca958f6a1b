"""The MoE's static execution and advmoe.accel (issue 22): the same function as the sparse execution, no host read in
a training iteration or an attack (proven on the meta device, where any host read fails), forward and backward traced
whole by torch.compile(fullgraph=True); ADVMOE_ACCEL's settings and their one-line errors."""
import pytest
import torch
import torch.nn.functional as F

from advmoe import accel
from advmoe.attacks import component_attack, pgd
from advmoe.bench import mixed_routing
from advmoe.experiments import TABLE1, model_for, row_spec
from advmoe.models import create_model, fixed_routing, forced_expert, moe_layers, record_routing, set_execution
from advmoe.train import iteration, make_optimizers

STATIC = accel.Accel(execution="static")


def _meta_batch(n: int = 8):
    return torch.rand(n, 3, 32, 32, device="meta"), torch.randint(0, 10, (n,), device="meta")


@pytest.mark.parametrize("label,kind,method,scale", TABLE1, ids=[row[0] for row in TABLE1])
def test_a_training_iteration_of_every_table1_method_reads_nothing_on_the_host(label, kind, method, scale):
    spec = row_spec("smoke", kind, method, scale)
    torch.manual_seed(0)
    model = accel.prepare(model_for(spec), "meta", STATIC)
    batch = _meta_batch()
    loss, acc = iteration(model, make_optimizers(model, spec), batch, batch, spec)
    assert loss.device.type == acc.device.type == "meta" and loss.shape == acc.shape == ()


def test_the_sparse_execution_does_read_the_host_so_the_meta_check_can_fail():
    spec = row_spec("smoke", "moe", "at", 0.5)
    model = model_for(spec).to("meta")
    batch = _meta_batch()
    with pytest.raises((RuntimeError, NotImplementedError)):
        iteration(model, make_optimizers(model, spec), batch, batch, spec)


def test_evaluation_attacks_read_nothing_on_the_host_with_routing_free_fixed_or_forced():
    torch.manual_seed(0)
    model = set_execution(create_model("resnet18", "moe", 0.5, 2, base_width=4), "static").to("meta").eval()
    x, y = _meta_batch()
    for mode in (None, "fixed", "forced"):
        with record_routing(model) as routes:
            model(x)
        context = (fixed_routing(model, dict(routes)) if mode == "fixed" else forced_expert(model, 1) if mode
                   else torch.enable_grad())
        with context:
            x_adv = pgd(model, x, y, 8 / 255, 2 / 255, 3)  # CE: keeps each example's first fooling iterate
        assert x_adv.device.type == "meta" and x_adv.shape == x.shape
    net = set_execution(create_model("resnet18", "network-moe", n_experts=2, base_width=4), "static").to("meta")
    assert component_attack(net, x, y, 8 / 255, 2 / 255, 2, "experts").device.type == "meta"


def _outputs_and_gradients(model, x, y, run=None):
    """Output, input gradient and parameter gradients (by name in `model`) of CE through `run` (default: model)."""
    x = x.clone().requires_grad_(True)
    model.zero_grad()
    out = (model if run is None else run)(x)
    F.cross_entropy(out, y).backward()
    return out.detach(), x.grad, {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("kind,kw", [("moe", dict(scale=0.5, n_experts=3)), ("moe", dict(scale=0.5, router="shared")),
                                     ("conv-moe", dict(n_experts=4)), ("network-moe", dict(n_experts=3))])
def test_static_execution_computes_the_sparse_function_and_gradients(kind, kw):
    torch.manual_seed(0)
    model = mixed_routing(create_model("resnet18", kind, base_width=8, **kw)).eval()
    x, y = torch.rand(12, 3, 32, 32), torch.randint(0, 10, (12,))
    results = {}
    for execution in ("sparse", "static"):
        set_execution(model, execution)
        torch.manual_seed(1)  # the same random routing term in both runs
        with record_routing(model) as routes:
            results[execution] = _outputs_and_gradients(model, x, y)
        results[execution] += (routes,)
        assert all(c.device.type == "cpu" for c in routes.values())
    (out_s, gx_s, g_s, routes_s), (out_t, gx_t, g_t, routes_t) = results["sparse"], results["static"]
    assert any(len(set(c.tolist())) > 1 for c in routes_s.values()), "routing must actually split the batch"
    assert all(torch.equal(routes_s[n], routes_t[n]) for n in routes_s)
    assert torch.allclose(out_s, out_t, atol=1e-5) and torch.allclose(gx_s, gx_t, atol=1e-6, rtol=1e-4)
    for name, g in g_t.items():  # an expert no sample chose has no gradient in the sparse run: zero in the static one
        assert torch.allclose(g_s.get(name, torch.zeros_like(g)), g, atol=1e-5, rtol=1e-4), name
    for e in range(kw["n_experts"] if "n_experts" in kw else 2):  # a forced pathway, both ways
        outs = []
        for execution in ("sparse", "static"):
            with torch.no_grad(), forced_expert(set_execution(model, execution), e):
                outs.append(model(x))
        assert torch.allclose(*outs, atol=1e-5)


def test_compile_traces_the_static_moe_forward_and_backward_whole():
    torch.manual_seed(0)
    model = set_execution(create_model("resnet18", "moe", 0.5, 2, base_width=4), "static").train()
    x, y = torch.rand(4, 3, 32, 32), torch.randint(0, 10, (4,))
    eager = _outputs_and_gradients(model, x, y)
    torch._dynamo.reset()
    compiled = _outputs_and_gradients(model, x, y, torch.compile(model, backend="aot_eager", fullgraph=True))
    assert torch.allclose(eager[0], compiled[0], atol=1e-6) and torch.allclose(eager[1], compiled[1], atol=1e-6)
    assert eager[2].keys() == compiled[2].keys() and any("router" in n for n in compiled[2])
    assert all(torch.allclose(eager[2][n], compiled[2][n], atol=1e-6) for n in eager[2])
    torch._dynamo.reset()
    with pytest.raises(Exception, match="data-dependent|tolist|item"):  # the sparse execution cannot be traced
        torch.compile(set_execution(model, "sparse"), backend="aot_eager", fullgraph=True)(x)
    torch._dynamo.reset()


def test_settings_come_from_the_device_and_advmoe_accel(monkeypatch):
    monkeypatch.delenv(accel.ENV, raising=False)
    assert accel.for_device("cpu") == accel.Accel()  # the CPU: sparse, nothing else
    assert accel.parse("", torch.device("cuda")) == STATIC
    fast = accel.parse("compile=reduce-overhead, channels_last,bf16", torch.device("cuda"))
    assert fast == accel.Accel("static", "reduce-overhead", True, True)
    assert accel.parse(fast.text(), torch.device("cuda")) == fast
    with accel.use(accel.Accel("static")):
        assert accel.for_device("cpu").execution == "static"
        model = accel.prepare(create_model("resnet18", "moe", 0.5, 2, base_width=4), "cpu")
        assert {m.execution for m in moe_layers(model).values()} == {"static"}
    assert accel.for_device("cpu") == accel.Accel()  # restored
    from advmoe.experiments import provenance
    assert provenance(torch.device("cpu"))["accel"] == accel.Accel().record()


@pytest.mark.parametrize("text,device,needle", [
    ("fast", "cuda", "unknown setting 'fast'; allowed: execution=sparse|static"),
    ("compile=turbo", "cuda", "unknown compile mode 'turbo'"),
    ("execution=dense", "cuda", "unknown execution 'dense'"),
    ("bf16", "cpu", "is for a GPU; on the CPU only execution= applies"),
])
def test_bad_settings_fail_in_one_line_naming_what_is_allowed(text, device, needle):
    with pytest.raises(ValueError, match=needle.replace("|", r"\|")):
        accel.parse(text, torch.device(device))


def test_the_cli_refuses_bad_settings_before_any_compute(monkeypatch, capsys):
    from advmoe.cli import main

    monkeypatch.setenv(accel.ENV, "bf16")
    assert main(["run", "--preset", "smoke", "--only", "nothing-matches-this"]) == 2
    assert "ADVMOE_ACCEL" in capsys.readouterr().err


def test_compiled_holds_only_within_its_block_and_keeps_the_state_dict():
    model = create_model("resnet18", "moe", 0.5, 2, base_width=4)
    keys = list(model.state_dict())
    with accel.compiled(model, "cpu", accel.Accel()):  # nothing asked: the module as it is
        assert model._compiled_call_impl is None
    with accel.compiled(model, "cpu", accel.Accel("static", compile="default")):  # compiled lazily, on first call
        assert model._compiled_call_impl is not None and list(model.state_dict()) == keys
    assert model._compiled_call_impl is None
