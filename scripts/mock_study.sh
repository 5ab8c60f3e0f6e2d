#!/usr/bin/env bash
# The mock study of issue 5 (docs/mock_study.md): N mock lenses (EPL + shear, VAE sources decoded
# from random latents, HST-like noise) at three SNR levels (10, 30, 100), each fitted with
# `dslens fit`; writes a markdown table of errors, coverage, R-hat, divergences and time into
# docs/mock_study.md (between its "mock-study table" markers; the rest of the page is kept).
#
#   scripts/mock_study.sh [N] [--vae DIR] [other `dslens mock-study` options, e.g. --snr 30,100]
#   scripts/mock_study.sh combine [--replace] [PART ...]
#
# N: mocks per SNR level (default 30). The VAE defaults to the study's own, kept in git
# (docs/mock_study/vae: configs/train_vae_mock_study.json trained on 2 cores), so that every run
# and every part of the study decodes the same sources; --vae (or VAE_DIR) gives another.
# Cost: 3 x N fits of 4 chains x (500 warmup + 500 draws). On 2 CPU cores the full study (N = 30,
# 90 fits) takes about 25 core-hours; on a GPU (add --device cuda) minutes.
#
# A study in parts (docs/mock_study.md, "A study in parts"): `--first K` with N = 30 - K fits
# mocks K..29; `RUN_DIR=... scripts/mock_study.sh N --first K ... --partial` tabulates what an
# unfinished part has fitted; copy its study/mock_study.json into docs/mock_study/parts/. Then
# `scripts/mock_study.sh combine` joins docs/mock_study/parts/*.json (or the PARTs given) and
# writes the joined table into docs/mock_study.md. With --replace a mock that several parts hold
# is taken from the last of them (refits with `--only`, named so that they sort after the parts they
# refit: parts/s39-refit-... after parts/s36-part-...); without it such a mock is an error.
#   BUILD_DIR  build folder (default: build)
#   VAE_DIR    a trained VAE checkpoint folder (same as --vae)
#   RUN_DIR    the run folder (default: runs/mock-study-<ts>); an existing one is resumed
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
BUILD_DIR=${BUILD_DIR:-build}
dslens="$BUILD_DIR/dslens"
invocation="scripts/mock_study.sh${*:+ $*}"
doc=docs/mock_study.md
begin='<!-- mock-study table: begin -->'
end='<!-- mock-study table: end -->'

# Writes stdin between the markers of docs/mock_study.md (after the page's title if it has none).
write_table() {
  local table tmp
  table=$(mktemp)
  tmp=$(mktemp)
  cat >"$table"
  if grep -qF "$begin" "$doc" && grep -qF "$end" "$doc"; then
    awk -v b="$begin" -v e="$end" -v t="$table" '
      $0 == b { print; while ((getline line < t) > 0) print line; skip = 1; next }
      $0 == e { skip = 0 }
      !skip { print }' "$doc" >"$tmp"
  else
    { head -n 1 "$doc"; echo; echo "$begin"; cat "$table"; echo "$end"; tail -n +2 "$doc"; } >"$tmp"
  fi
  mv "$tmp" "$doc"
  rm -f "$table"
}

# The table's markdown, its headings one level down (the page has its own title).
demote() { sed -e 's/^# /## /' -e 's/^## \(SNR\|Overview\|Targets\)/### \1/'; }

if [[ ${1:-} == combine ]]; then
  shift
  replace=()
  if [[ ${1:-} == --replace ]]; then
    replace=(--replace)
    shift
  fi
  parts=("$@")
  if [[ ${#parts[@]} -eq 0 ]]; then
    shopt -s nullglob
    parts=(docs/mock_study/parts/*.json)
  fi
  [[ ${#parts[@]} -gt 0 ]] || { echo "mock_study: no parts in docs/mock_study/parts" >&2; exit 2; }
  run=${RUN_DIR:-runs/mock-study-combined-$(date +%Y%m%d-%H%M%S)}
  list=$(IFS=,; echo "${parts[*]}")
  "$dslens" mock-study --combine "$list" ${replace[@]+"${replace[@]}"} --out "$run"
  {
    demote <"$run/mock_study.md"
    echo
    echo "Made by \`$invocation\` on $(date -u '+%Y-%m-%d %H:%M UTC'), which ran"
    echo "\`$dslens mock-study --combine $list${replace[*]:+ ${replace[*]}} --out $run\`."
  } | write_table
  echo "mock_study: the joined table is in $doc (raw numbers: $run/mock_study.json)"
  exit 0
fi

mocks=30
if [[ $# -gt 0 && $1 =~ ^[0-9]+$ ]]; then
  mocks=$1
  shift
fi
vae=${VAE_DIR:-docs/mock_study/vae}
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
study=(mock-study --vae "$vae" --out "$run/study" --mocks "$mocks" ${extra[@]+"${extra[@]}"})
[[ -d $run/study ]] && study+=(--resume)
echo "mock_study: $dslens ${study[*]}"
"$dslens" "${study[@]}"

{
  demote <"$run/study/mock_study.md"
  echo
  echo "Made by \`$invocation\` (on $(nproc) CPU cores of $(hostname)), which ran"
  echo "\`$dslens ${study[*]}\`; the run folder was \`$run\` (mocks, fits with report.png per"
  echo "lens, mock_study.json)."
} | write_table
echo
echo "mock_study: done. Table: $doc (also $run/study/mock_study.md);"
echo "  raw numbers per mock: $run/study/mock_study.json; fits: $run/study/snr*/fit/"
