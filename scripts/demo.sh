#!/usr/bin/env bash
# The main dslens job, from a fresh checkout: sets up (scripts/setup.sh: packages + Release build
# in build/), trains a small source-prior VAE on synthetic galaxies, simulates a lensed pixelated
# galaxy, and says where the reports are.
#   BUILD_DIR  build folder (default: build)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
BUILD_DIR=${BUILD_DIR:-build}
stamp=$(date +%Y%m%d-%H%M%S)
run=runs/demo-$stamp

mkdir -p runs
echo "demo: training the source-prior VAE on synthetic galaxies (configs/train_vae_default.json) into $run-vae"
"$BUILD_DIR/dslens" train-vae configs/train_vae_default.json --out "$run-vae"

echo "demo: simulating configs/epl_shear_pixelated.json into $run"
"$BUILD_DIR/dslens" simulate configs/epl_shear_pixelated.json --out "$run"

echo
echo "demo: done."
echo "  simulated image, model, noise map, PSF, truth: $run/"
echo "  preview (image, model, source + caustics, convergence + critical curves):"
echo "    $run/preview.png"
echo "  VAE training report (loss curves, reconstructions, prior samples, metrics.json): $run-vae/"
