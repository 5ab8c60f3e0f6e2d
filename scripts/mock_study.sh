#!/usr/bin/env bash
# The mock study of issue 5 (docs/mock_study.md): N mock lenses (EPL + shear, VAE sources decoded
# from random latents, HST-like noise) at three SNR levels (10, 30, 100), each fitted with
# `dslens fit`; writes a markdown table of errors, coverage, R-hat, divergences and time, and
# copies it to docs/mock_study.md.
#
#   scripts/mock_study.sh [N] [--vae DIR] [other `dslens mock-study` options, e.g. --snr 30,100]
#
# N: mocks per SNR level (default 30). Without --vae (or VAE_DIR) a VAE is trained first
# (configs/train_vae_mock_study.json: the demo's VAE with pixel_sigma 0.1, whose prior draws are
# single galaxies rather than sprays of knots; about 4 minutes on 2 cores) into
# runs/mock-study-<ts>/vae.
# Cost: 3 x N fits of 4 chains x (500 warmup + 500 draws). On 2 CPU cores the full study (N = 30,
# 90 fits) takes hours; on a GPU (add --device cuda) minutes.
#   BUILD_DIR  build folder (default: build)
#   VAE_DIR    a trained VAE checkpoint folder (same as --vae)
#   RUN_DIR    the run folder (default: runs/mock-study-<ts>); an existing one is resumed
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
BUILD_DIR=${BUILD_DIR:-build}
dslens="$BUILD_DIR/dslens"
invocation="scripts/mock_study.sh${*:+ $*}"

mocks=30
if [[ $# -gt 0 && $1 =~ ^[0-9]+$ ]]; then
  mocks=$1
  shift
fi
vae=${VAE_DIR:-}
extra=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --vae) vae=$2; shift 2 ;;
    --vae=*) vae=${1#--vae=}; shift ;;
    --out | --out=* | --mocks | --mocks=* | --resume)
      echo "mock_study.sh: $1 is set by the script (N is the first argument; RUN_DIR resumes)" >&2
      exit 2 ;;
    *) extra+=("$1"); shift ;;
  esac
done

run=${RUN_DIR:-runs/mock-study-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$run"
commands=()
if [[ -z $vae ]]; then
  vae=$run/vae
  if [[ ! -f $vae/checkpoint.json ]]; then
    echo "mock_study [1/2]: training the source-prior VAE (configs/train_vae_mock_study.json) into $vae"
    rm -rf "$vae"
    "$dslens" train-vae configs/train_vae_mock_study.json --out "$vae"
  fi
  commands+=("$dslens train-vae configs/train_vae_mock_study.json --out $vae")
fi

study=(mock-study --vae "$vae" --out "$run/study" --mocks "$mocks" ${extra[@]+"${extra[@]}"})
[[ -d $run/study ]] && study+=(--resume)
echo "mock_study [2/2]: $dslens ${study[*]}"
"$dslens" "${study[@]}"
commands+=("$dslens ${study[*]}")

{
  cat "$run/study/mock_study.md"
  echo
  echo "## How this file was made"
  echo
  echo "\`$invocation\` (on $(nproc) CPU cores of $(hostname)), which ran:"
  echo
  echo '```'
  printf '%s\n' "${commands[@]}"
  echo '```'
  echo
  echo "The run folder was \`$run\` (mocks, fits with report.png per lens, mock_study.json)."
} >docs/mock_study.md
echo
echo "mock_study: done. Table: docs/mock_study.md (also $run/study/mock_study.md);"
echo "  raw numbers per mock: $run/study/mock_study.json; fits: $run/study/snr*/fit/"
