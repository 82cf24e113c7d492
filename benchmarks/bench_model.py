"""Peak backpropagation speed of the built-in model (issue 2): the figures of `napari-prm bench`
(`--no-original` is its `--no-compare-original`)."""

import argparse

from napari_prm.bench import benchmark_model, benchmark_retrieval, format_report

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--size", type=int, default=448)
parser.add_argument("--peaks", type=int, default=20)
parser.add_argument("--device", default=None)
parser.add_argument("--peak-batch-size", type=int, default=None)
parser.add_argument("--no-original", action="store_true", help="skip the original one-backward-per-peak loop")
args = parser.parse_args()
figures = benchmark_model(size=args.size, num_peaks=args.peaks, device=args.device,
                          peak_batch_size=args.peak_batch_size, compare_original=not args.no_original)
print(format_report(figures, benchmark_retrieval()))
