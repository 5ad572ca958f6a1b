"""Time each attack of standard AutoAttack (APGD-CE, APGD-T, FAB-T, Square) on a trained cpu-preset model.

Runs the library's standard cascade on n fixed test images (each attack only sees the points still robust,
as in Table 2) and records, per attack, the seconds it took and the robust accuracy after it. Used to size
the `cpu` preset's AutoAttack setting (advmoe.experiments.autoattack_settings).

    python benchmarks/autoattack_cost.py --label "AT (Dense)" --n 100 --output results/bench/autoattack-cost.json
"""
import argparse
import json
import logging
import re
import time

import torch

from advmoe import data as datalib
from advmoe import experiments as ex
from advmoe.attacks import _autoattack_class, frozen_eval
from advmoe.io import atomic_write_json


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="cpu")
    p.add_argument("--label", default="AT (Dense)", choices=[row[0] for row in ex.TABLE1])
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--output", default="results/bench/autoattack-cost.json")
    args = p.parse_args(argv)

    row = next(r for r in ex.TABLE1 if r[0] == args.label)
    spec = ex.row_spec(args.preset, row[1], row[2], row[3])
    model = ex.load_model(spec)
    test = datalib.load(spec.dataset, "test", subset=spec.test_subset, seed=ex.SUBSET_SEED).subset(args.n, ex.SUBSET_SEED)
    x, y = datalib.to_float(test.images), test.labels
    cls, library = _autoattack_class()
    records, t0 = [], time.perf_counter()

    class Collect(logging.Handler):  # the library logs "robust accuracy after X: r% (total time t s)"
        def emit(self, record):
            m = re.match(r"robust accuracy after ([\w-]+): ([\d.]+)% \(total time ([\d.]+) s\)", record.getMessage())
            if m:
                records.append({"attack": m[1].lower(), "ra_after": float(m[2]),
                                "cumulative_seconds": float(m[3])})
                print(records[-1], flush=True)

    logger = logging.getLogger("auto-attack")
    logger.setLevel(logging.DEBUG)
    logger.addHandler(Collect())
    with frozen_eval(model):
        adversary = cls(model, norm="Linf", eps=spec.eval_eps, seed=0, version="standard")
        adversary.run_standard_evaluation(x, y, batch_size=250)
    previous = 0.0
    for r in records:
        r["seconds"], previous = r["cumulative_seconds"] - previous, r["cumulative_seconds"]
    result = {"model": args.label, "spec_hash": spec.hash, "n": args.n, "library": library,
              "torch_threads": torch.get_num_threads(), "total_seconds": time.perf_counter() - t0,
              "attacks": records, "provenance": ex.provenance(torch.device("cpu"))}
    atomic_write_json(result, args.output)
    print(json.dumps({k: v for k, v in result.items() if k != "provenance"}, indent=1))


if __name__ == "__main__":
    main()
