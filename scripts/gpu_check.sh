#!/usr/bin/env bash
# The GPU check: builds dslens against PyTorch's CUDA LibTorch on a machine without a package
# registry, checks CUDA against CPU on a simulated lens, runs the GPU benchmarks and the test suite.
# Everything is written to one log, $OUT/gpu_check.log (default OUT: runs/gpu-check-<ts>), with the
# benchmarks' JSON beside it.
#
#   scripts/bundle_deps.sh          # once, on a Debian machine: third_party/bundle
#   scripts/gpu_check.sh            # on the GPU machine, with third_party/bundle copied along
#
# BUDGET (seconds, default 560) bounds the whole run: each step gets what is left, the tests last.
# On an H200 (2026-11-30, docs/benchmarks.md "On a GPU"): configure 10 s, the dslens target 110 s
# on 16 cores, the CUDA/CPU comparison and the simulate/vae benches 25 s; the two bench-fit runs
# did not finish their MAP in 150 s each.
# On an H200 again (2026-12-04, docs/benchmarks.md "On a GPU, second run"): configure 9 s, dslens
# and the sampler tests 144 s; a 1-lens bench fit with the full 500 + 500 needs about 13 minutes
# while its CUDA graphs fall back to eager calls, so give it a cap (FIT_CAP) and read its progress
# lines and fit.log (copied to $OUT when the cap stops it).
# From session 40: the fused CUDA kernels (EPL, INTERPOL; DSLENS_WITH_CUDA_KERNELS) are built
# with the physics tests, tested against the CPU's kernels first (`*FusedCuda*`; the benchmarks
# fall back to --cuda-kernels off when those fail) and timed on and off by `bench simulate`.
# FIT_ARGS and FIT64_ARGS override the arguments of the short `bench fit` runs of 1 and 64 lenses
# (defaults: 60 warmup + 40 draws at maximum depth 8; 30 + 20 at depth 7): enough for the MAP's
# time and the gradient evaluations per second, not for ESS.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu-check-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
LOG=$OUT/gpu_check.log
T0=$(date +%s)
DEADLINE=$((T0 + ${BUDGET:-560}))
BUILD=${BUILD_DIR:-build-gpu}
DEVICE=${DEVICE:-cuda}   # DEVICE=cpu: a dry run of this script on a machine without a GPU
FIT_ARGS=${FIT_ARGS:---warmup 60 --draws 40 --max-depth 8}
FIT64_ARGS=${FIT64_ARGS:---warmup 30 --draws 20 --max-depth 7}
FIT_CAP=${FIT_CAP:-150}      # seconds for each bench-fit run
FIT64_CAP=${FIT64_CAP:-150}
# SKIP: steps left out, any of: sampler-tests simulate benches tests (e.g. SKIP="benches tests"
# when the device time is for `bench fit` alone).
SKIP=${SKIP:-}
skipped() { [[ " $SKIP " == *" $1 "* ]]; }
exec > >(tee -a "$LOG") 2>&1

# step NAME CAP COMMAND...: runs COMMAND with the smaller of CAP and the time left; its output goes
# to the log, its exit status is returned.
step() {
  local name=$1 cap=$2
  shift 2
  local left=$((DEADLINE - $(date +%s)))
  local limit=$((cap < left ? cap : left))
  if ((limit < 15)); then
    echo "=== $name: skipped, ${left} s left"
    return 124
  fi
  echo "=== $name (at most ${limit} s, $(( $(date +%s) - T0 )) s in): $*"
  local s=$(date +%s)
  timeout "$limit" "$@"
  local rc=$?
  echo "=== $name: exit $rc after $(( $(date +%s) - s )) s"
  return $rc
}

# nvcc for the fused CUDA kernels (CMake's check_language(CUDA) looks on the PATH).
if ! command -v nvcc >/dev/null && [[ -x /usr/local/cuda/bin/nvcc ]]; then
  export PATH=/usr/local/cuda/bin:$PATH
fi
echo "=== machine"
nproc
nvcc --version | tail -1 || echo "no nvcc: the fused CUDA kernels are not built"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
g++ --version | head -1
cmake --version | head -1
python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)'

export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
prefix=$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)')
generator=()
command -v ninja >/dev/null && generator=(-G Ninja)
configure=(cmake -S . -B "$BUILD" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release
  -DCMAKE_PREFIX_PATH="$prefix")
step configure 120 "${configure[@]}" || exit 1
# The dslens target and the sampler tests (the CUDA graph tests) in one build, all cores busy;
# -k 0 lists every compile error of a failing build at once.
targets=(--target dslens)
skipped sampler-tests || targets+=(--target dslens_samplers_tests --target dslens_physics_tests)
keep_going=()
((${#generator[@]})) && keep_going=(-- -k 0)
if ! step build-dslens 300 cmake --build "$BUILD" -j "$(nproc)" "${targets[@]}" "${keep_going[@]}"; then
  # The c10d (gloo) communicator and the CUDA graphs (samplers/src/cuda_graph.cpp, never compiled
  # against CUDA headers before this script ran it) are the parts most tied to LibTorch's CUDA
  # build: retry without them (the log above says which failed).
  step configure-fallback 60 "${configure[@]}" -DDSLENS_WITH_C10D=OFF \
    -DDSLENS_WITH_CUDA_GRAPHS=OFF -DDSLENS_WITH_CUDA_KERNELS=OFF || exit 1
  step build-dslens-fallback 240 cmake --build "$BUILD" -j "$(nproc)" --target dslens || exit 1
fi
D=$BUILD/dslens
ldd "$D" | grep -E 'torch|c10|cfitsio|not found'

# The tests that run only on a GPU: first, since the fits below rely on them. The fused CUDA
# kernels (EPL, INTERPOL) against the CPU's kernels, then the CUDA graphs.
# KERNELS: whether the benchmarks below use the fused CUDA kernels; off when their tests fail, so
# that the fits' figures stay those of a correct model.
KERNELS=${KERNELS:-on}
if ! skipped sampler-tests && [[ -x $BUILD/tests/dslens_physics_tests ]]; then
  if ! step cuda-kernel-tests 60 "$BUILD/tests/dslens_physics_tests" \
    --gtest_filter='*FusedCuda*:EPL.*:Interpol.*'; then
    echo "=== the fused CUDA kernels' tests failed: the benchmarks run with --cuda-kernels off"
    KERNELS=off
  fi
fi
if ! skipped sampler-tests && [[ -x $BUILD/tests/dslens_samplers_tests ]]; then
  step cuda-graph-tests 60 "$BUILD/tests/dslens_samplers_tests" --gtest_filter='CudaGraph.*'
fi

work=$(mktemp -d)
# CUDA against CPU: the same noise-free model image in float64 (and float32 on CUDA).
if ! skipped simulate; then
cat >"$work/sim.json" <<'EOF'
{"grid": {"nx": 100, "ny": 100, "pixel_scale": 0.05, "supersampling": 2},
 "psf": {"fwhm": 0.1},
 "mass": [{"type": "EPL", "theta_E": 1.2, "gamma": 2.1, "e1": 0.1, "e2": -0.05,
           "center_x": 0.02, "center_y": -0.01},
          {"type": "SHEAR", "gamma1": 0.03, "gamma2": -0.02}],
 "source": [{"type": "SERSIC_ELLIPSE", "amp": 20.0, "R_sersic": 0.3, "n_sersic": 1.5,
             "e1": 0.1, "e2": 0.05, "center_x": 0.05, "center_y": 0.02}],
 "noise": {"background_rms": 0.01, "exposure_time": 2000.0},
 "seed": 3}
EOF
for run in cpu:float64 "$DEVICE":float64 "$DEVICE":float32; do
  step "simulate-${run/:/-}" 60 "$D" simulate "$work/sim.json" --out "$work/${run/:/-}" \
    --device "${run%%:*}" --dtype "${run##*:}" --log-level warn
done
python3 - "$work" "$DEVICE" <<'EOF'
import sys, numpy as np
def fits(path):
    raw = open(path, 'rb').read()
    cards, i = {}, 0
    while True:
        card = raw[i:i + 80].decode(); i += 80
        if card.startswith('END'): break
        if '=' in card[:10]: cards[card[:8].strip()] = card[10:].split('/')[0].strip()
    i = (i + 2879) // 2880 * 2880
    bitpix, nx, ny = int(cards['BITPIX']), int(cards['NAXIS1']), int(cards['NAXIS2'])
    dt = {-64: '>f8', -32: '>f4'}[bitpix]
    return np.frombuffer(raw[i:i + nx * ny * abs(bitpix) // 8], dt).reshape(ny, nx).astype(float)
w = sys.argv[1]
ref = fits(f'{w}/cpu-float64/model.fits')
dev = sys.argv[2]
for run in [f'{dev}-float64', f'{dev}-float32']:
    m = fits(f'{w}/{run}/model.fits')
    print(f'=== model image {run} against cpu-float64: max |diff| {np.abs(m - ref).max():.3e}, '
          f'peak {ref.max():.4f}, max |diff| / noise rms 0.01: {np.abs(m - ref).max() / 0.01:.3e}')
EOF
fi

# The image model's forward + gradient with and without the fused CUDA kernels: time and
# operators per call at the batch of one lens's 4 chains and at 256.
if ! skipped simulate; then
  for kernels in on off; do
    step "bench-simulate-kernels-$kernels" 30 "$D" bench simulate --device "$DEVICE" \
      --dtype float32 --interpolation bicubic --batches 4,256 --min-time 0.3 \
      --cuda-kernels "$kernels" --json >"$OUT/bench_simulate_kernels_$kernels.json"
    cat "$OUT/bench_simulate_kernels_$kernels.json"
  done
fi

# bench_fit LENSES CAP ARGS...: one `bench fit` run; its JSON and the fit's own log (the MAP's
# stages and NUTS's progress, also when the cap stopped the run) land in $OUT.
bench_fit() {
  local lenses=$1 cap=$2
  shift 2
  local tmp=$work/bench-$lenses
  mkdir -p "$tmp"
  TMPDIR=$tmp step "bench-fit-$lenses" "$cap" "$D" bench fit --device "$DEVICE" --lenses "$lenses" \
    --cuda-kernels "$KERNELS" "$@" --json >"$OUT/bench_fit_$lenses.json"
  cat "$OUT/bench_fit_$lenses.json"
  local log
  log=$(ls "$tmp"/dslens-bench-fit-*/fit/fit.log 2>/dev/null | head -1)
  [[ -n $log ]] && cp "$log" "$OUT/fit_$lenses.log"
  # The MAP's L-BFGS calls per stage (session 41's compacted backtracks) and the CUDA graphs' lines.
  [[ -n $log ]] && grep -E "L-BFGS made|cuda graphs:|warmup took|sampling took" "$log" | cut -c1-300 || true
}
# shellcheck disable=SC2086
bench_fit 1 "$FIT_CAP" $FIT_ARGS
# shellcheck disable=SC2086
bench_fit 64 "$FIT64_CAP" $FIT64_ARGS

if skipped benches; then
  echo "=== simulate, vae and sampler benches: skipped (SKIP)"
else
step bench-simulate 60 "$D" bench simulate --device "$DEVICE" --dtype float32 --batches 1,16,256,1024 \
  --min-time 0.5 --json >"$OUT/bench_simulate.json"
cat "$OUT/bench_simulate.json"
step bench-vae 60 "$D" bench vae --device "$DEVICE" --batches 1,64,1024,8192 --seconds 0.5 \
  --json >"$OUT/bench_vae.json"
cat "$OUT/bench_vae.json"
step bench-sampler 90 "$D" bench sampler --device "$DEVICE" --chains 4,64,1024 --warmup 300 \
  --draws 300 >"$OUT/bench_sampler.txt"
cat "$OUT/bench_sampler.txt"
fi

# The test suite (CPU) against this LibTorch.
if ! skipped tests && step build-tests 200 cmake --build "$BUILD" -j "$(nproc)"; then
  step ctest 120 ctest --test-dir "$BUILD" -j "$(nproc)" --output-on-failure --timeout 100 |
    tail -n 40
fi
echo "=== done after $(( $(date +%s) - T0 )) s"
