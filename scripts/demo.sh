#!/usr/bin/env bash
# The main dslens job, from a fresh checkout (docs/fit.md): sets up (scripts/setup.sh: packages +
# Release build in build/), trains a small source-prior VAE on synthetic galaxies, simulates a
# mock lens whose source is decoded by that VAE, fits it (MAP, then NUTS), and prints where the
# report is. About 7 minutes on 2 cores after the build (docs/benchmarks.md).
#   BUILD_DIR  build folder (default: build)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
BUILD_DIR=${BUILD_DIR:-build}
dslens="$BUILD_DIR/dslens"
stamp=$(date +%Y%m%d-%H%M%S)
run=runs/demo-$stamp
mkdir -p "$run"
# The demo configs refer to ./vae and ./mock beside them.
cp configs/demo/simulate.json configs/demo/fit.json "$run/"

echo "demo [1/3]: training the source-prior VAE on synthetic galaxies (configs/train_vae_default.json) into $run/vae"
"$dslens" train-vae configs/train_vae_default.json --out "$run/vae"

echo "demo [2/3]: simulating a mock lens (EPL + shear, VAE source) into $run/mock"
"$dslens" simulate "$run/simulate.json" --out "$run/mock"

echo "demo [3/3]: fitting it (MAP from many prior draws, then NUTS) into $run/fit"
"$dslens" fit "$run/fit.json" --out "$run/fit" --dtype float32

echo
echo "demo: done."
echo "  fit report (data, model, residuals, source + caustics, convergence + critical curves, corner plot):"
echo "    $run/fit/report.png"
echo "  posterior summary against the truth: $run/fit/summary.txt"
echo "  warnings: $run/fit/warnings.json (the demo's chains are short, 4 x (150 + 100) draws, so"
echo "    R-hat and ESS warnings are expected; for a posterior to trust, refit with more:"
echo "    $dslens fit $run/fit.json --out $run/fit-long --init $run/fit --warmup 500 --draws 1000)"
echo "  mock: $run/mock/ (preview.png, truth.json); VAE training report: $run/vae/"
