"""The table of estimates in docs/guides/speedup.md: units, trainable parameters, the
FLOP-based `estimate_speedup`, the original's `calc_speedup` (DenseNet-BC),
the saving in all-reduced gradient bytes and the forward
multiply-accumulates per image, for the networks the paper reports and the
benchmarks' DenseNet-BC L=22, at one schedule. No training: seconds to
minutes (it builds WRN-28-10 and VGG-E).

Usage (the committed results in benchmarks/estimates/estimates.json):
    python scripts/estimate_speedups.py --out benchmarks/estimates
"""

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from freezeout_tf import (  # noqa: E402
    calc_speedup, estimate_speedup, models, unit_flops,
)
from freezeout_tf.tools.benchmarking import write_report  # noqa: E402
from freezeout_tf.estimates.speedup import gradient_bytes_saving  # noqa: E402

# name -> (builder, DenseNet-BC (growth rate, layers per dense block) for
# calc_speedup, which covers DenseNet-BC only).
NETWORKS = {
    "DenseNet-BC L=22 k=12": (  # the benchmarks' network
        lambda: models.densenet_bc(depth=22, growth_rate=12), (12, 3)),
    "DenseNet-BC L=76 k=12": (
        lambda: models.densenet_bc(depth=76, growth_rate=12), (12, 12)),
    "DenseNet-BC L=100 k=12": (
        lambda: models.densenet_bc(depth=100, growth_rate=12), (12, 16)),
    "WRN-28-10": (lambda: models.wide_resnet(depth=28, widen_factor=10), None),
    "WRN-16-4": (lambda: models.wide_resnet(depth=16, widen_factor=4), None),
    "VGG-E (16 conv)": (lambda: models.vgg("E"), None),
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--t0", type=float, default=0.8)
    parser.add_argument("--how-scale", default="cubic")
    parser.add_argument("--out", help="directory for estimates.json (e.g. "
                        "benchmarks/estimates)")
    args = parser.parse_args()
    rows = {}
    for name, (build, densenet) in NETWORKS.items():
        model = build()
        rows[name] = {
            "units": model.num_units,
            "trainable_parameters": int(sum(
                v.numpy().size for v in model.trainable_weights)),
            "estimate_speedup": estimate_speedup(model, args.t0,
                                                 args.how_scale),
            "calc_speedup": (None if densenet is None else calc_speedup(
                *densenet, args.t0, args.how_scale)),
            "gradient_bytes_saving": gradient_bytes_saving(
                model, args.t0, args.how_scale),
            "forward_macs_per_image": sum(unit_flops(model)),
        }
        print(name, rows[name], flush=True)
    if args.out:
        path = os.path.join(args.out, "estimates.json")
        write_report(path, {"t_0": args.t0, "how_scale": args.how_scale,
                            "networks": rows})
        print("wrote", path)


if __name__ == "__main__":
    main()
