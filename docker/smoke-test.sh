#!/usr/bin/env bash
# Smoke test of the service image, for real: build it, run it on 127.0.0.1, wait for /readyz,
# vocode the mel of a recorded clip, check the WAV, /metrics, the health check and a clean stop.
# Prints the image size and the cold start (container start -> first /readyz 200).
#
# usage: docker/smoke-test.sh [--make-base] [--no-build] [--prune]
#   --make-base  build on the home-made Debian bookworm base $LOCAL_BASE instead of BASE_IMAGE
#                (hosts without Docker Hub); docker/make-base-image.sh makes it when absent. Done
#                anyway when BASE_IMAGE is Debian bookworm and neither present nor pullable; for any
#                other base (the CUDA image's nvidia/cuda) only when asked: --make-base or MAKE_BASE=1.
#   --no-build   test $IMAGE as it is.
#   --prune      afterwards remove the untagged images builds leave behind (the builder stage, older
#                builds of the image); the legacy builder's cache goes with them.
# env:  IMAGE (flow-vocoder:cpu)   DOCKERFILE (docker/Dockerfile)   BASE_IMAGE (the Dockerfile's default)
#       LOCAL_BASE (flow-vocoder/base:bookworm)   MAKE_BASE=1 (as --make-base)
#       WHEELHOUSE   directory whose torch wheels are linked into .whl/ for the build and removed
#                    after it (default: pip's find-links, e.g. /opt/wheels; none: use the index)
#       BUILD_ARGS / RUN_ARGS   extra `docker build` / `docker run` arguments, e.g. RUN_ARGS="--gpus all"
#       CLIP (a short LJSpeech clip in ../shared/data/speech)   READY_TIMEOUT (seconds, 300)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
IMAGE=${IMAGE:-flow-vocoder:cpu}
DOCKERFILE=${DOCKERFILE:-docker/Dockerfile}
BASE_IMAGE=${BASE_IMAGE:-$(sed -n 's/^ARG BASE_IMAGE=//p' "$ROOT/$DOCKERFILE")}
CLIP=${CLIP:-$ROOT/../shared/data/speech/ljspeech/LJ001-0002.flac}
READY_TIMEOUT=${READY_TIMEOUT:-300}
LOCAL_BASE=${LOCAL_BASE:-flow-vocoder/base:bookworm}
HOP=256
SAMPLE_RATE=22050

make_base=${MAKE_BASE:-0} build=1 prune=0
for arg in "$@"; do
  case "$arg" in
    --make-base) make_base=1 ;;
    --no-build) build=0 ;;
    --prune) prune=1 ;;
    -h|--help) awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; exit 0 ;;
    *) echo "smoke-test: unknown argument $arg (see --help)" >&2; exit 2 ;;
  esac
done

say() { printf 'smoke-test: %s\n' "$*"; }
fail() { printf 'smoke-test: FAIL: %s\n' "$*" >&2; exit 1; }
now() { date +%s.%N; }
seconds_since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

for tool in docker curl python3; do
  command -v "$tool" >/dev/null || fail "$tool not found"
done
if ! engine_error=$(docker info 2>&1 >/dev/null); then
  say "docker info: $(tail -n 1 <<<"$engine_error")"
  # Containers and WSL often run without systemd, where `systemctl start docker` does not work.
  fail "no Docker engine; start it with 'sudo systemctl start docker', or without systemd 'sudo service docker start' or 'sudo dockerd >/var/log/dockerd.log 2>&1 &'"
fi
[ -f "$CLIP" ] || fail "clip not found: $CLIP (set CLIP)"

WORK=$(mktemp -d /tmp/vocoder-smoke.XXXXXX)
cid=""
added_wheels=()
cleanup() {
  if [ -n "$cid" ]; then docker rm -f "$cid" >/dev/null 2>&1 || true; fi
  # A copied torch wheel is ~200 MB (CUDA's: GBs) that only the build needed.
  if [ ${#added_wheels[@]} -gt 0 ]; then
    rm -f "${added_wheels[@]}"
    rmdir "$ROOT/.whl" 2>/dev/null || true
  fi
  if [ "$prune" = 1 ]; then
    docker image prune -f --filter label=flow-vocoder.stage=builder >/dev/null || true
    docker image prune -f --filter label=org.opencontainers.image.title=flow-vocoder >/dev/null || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# -- base image and build ---------------------------------------------------------------------
if [ "$build" = 1 ]; then
  if [ "$make_base" = 0 ] && ! docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    say "base image $BASE_IMAGE not present; trying docker pull"
    if ! timeout 120 docker pull -q "$BASE_IMAGE" >/dev/null 2>&1; then
      # A Debian base stands in for Debian unasked; for anything else (nvidia/cuda) it would
      # quietly build a different image than the one named, so only when asked.
      case "$BASE_IMAGE" in
        debian:bookworm*|"$LOCAL_BASE") make_base=1 ;;
        *) fail "cannot pull $BASE_IMAGE; to build on the home-made Debian base $LOCAL_BASE instead, set MAKE_BASE=1 (or pass --make-base)" ;;
      esac
    fi
  fi
  if [ "$make_base" = 1 ]; then
    if ! docker image inspect "$LOCAL_BASE" >/dev/null 2>&1; then
      say "making base image $LOCAL_BASE with docker/make-base-image.sh"
      bash "$ROOT/docker/make-base-image.sh" "$LOCAL_BASE"
    fi
    say "base image $LOCAL_BASE (home-made Debian bookworm) in place of $BASE_IMAGE"
    BASE_IMAGE=$LOCAL_BASE
  fi

  wheelhouse=${WHEELHOUSE-${PIP_FIND_LINKS:-$(python3 -m pip config get global.find-links 2>/dev/null || true)}}
  if [ -n "$wheelhouse" ] && [ "$wheelhouse" != none ] && compgen -G "$wheelhouse/torch-*.whl" >/dev/null; then
    mkdir -p "$ROOT/.whl"
    for wheel in "$wheelhouse"/torch-*.whl; do
      target=$ROOT/.whl/${wheel##*/}
      [ -e "$target" ] && continue
      ln "$wheel" "$target" 2>/dev/null || cp "$wheel" "$target"
      added_wheels+=("$target")
    done
    say "torch wheels from $wheelhouse linked into .whl/ (the build's wheelhouse; removed at exit)"
  fi

  say "building $IMAGE from $DOCKERFILE (BASE_IMAGE=$BASE_IMAGE; log: $WORK/build.log)"
  started=$(now)
  # shellcheck disable=SC2086  # BUILD_ARGS is a list of arguments
  if ! docker build -f "$ROOT/$DOCKERFILE" --build-arg "BASE_IMAGE=$BASE_IMAGE" ${BUILD_ARGS:-} \
      -t "$IMAGE" "$ROOT" >"$WORK/build.log" 2>&1; then
    tail -n 40 "$WORK/build.log" >&2
    fail "docker build failed"
  fi
  say "built in $(seconds_since "$started") s"
fi
docker image inspect "$IMAGE" >/dev/null 2>&1 || fail "image $IMAGE not found"
size_mb=$(docker image inspect -f '{{.Size}}' "$IMAGE" | awk '{ printf "%.0f", $1 / 1e6 }')

# -- a mel from a recorded clip: the host's `vocoder mel` when installed, else the image's ----
cp "$CLIP" "$WORK/"
clip_name=${CLIP##*/}
if command -v vocoder >/dev/null; then
  vocoder mel "$WORK/$clip_name" -o "$WORK/mel.npy" >/dev/null
else
  docker run --rm --user "$(id -u):$(id -g)" -v "$WORK:/work" --entrypoint vocoder "$IMAGE" \
    mel "/work/$clip_name" -o /work/mel.npy >/dev/null
fi
frames=$(python3 - "$WORK/mel.npy" <<'EOF'
import ast, struct, sys
with open(sys.argv[1], "rb") as f:  # .npy header, read without numpy
    assert f.read(6) == b"\x93NUMPY", "not a .npy file"
    major = f.read(2)[0]
    length = struct.unpack("<H" if major == 1 else "<I", f.read(2 if major == 1 else 4))[0]
    header = ast.literal_eval(f.read(length).decode("latin1"))
n_mels, frames = header["shape"]
assert n_mels == 80 and header["descr"] == "<f4", header
print(frames)
EOF
)
say "mel of $clip_name: (80, $frames) float32"

# -- run ----------------------------------------------------------------------------------
started=$(now)
# shellcheck disable=SC2086  # RUN_ARGS is a list of arguments
cid=$(docker run -d -p 127.0.0.1::8000 --health-interval 5s ${RUN_ARGS:-} "$IMAGE")
address=$(docker port "$cid" 8000/tcp | grep -m1 127.0.0.1)
url="http://$address"
say "container ${cid:0:12} on $url"

deadline=$(( $(date +%s) + READY_TIMEOUT ))
until [ "$(curl -s -o /dev/null -w '%{http_code}' "$url/readyz")" = 200 ]; do
  if [ "$(docker inspect -f '{{.State.Running}}' "$cid")" != true ]; then
    docker logs --tail 40 "$cid" >&2; fail "container exited before it was ready"
  fi
  if [ "$(date +%s)" -ge "$deadline" ]; then
    docker logs --tail 40 "$cid" >&2; fail "/readyz not 200 within $READY_TIMEOUT s"
  fi
  sleep 0.2
done
cold_start=$(seconds_since "$started")
say "ready: cold start (container start -> /readyz 200) $cold_start s"

# -- checks -------------------------------------------------------------------------------
check() { # NAME EXPECTED_STATUS CURL_ARGS... : runs curl, the body goes to $WORK/NAME
  local name=$1 expected=$2 got; shift 2
  got=$(curl -s -o "$WORK/$name" -w '%{http_code} %{content_type} %{time_total}' "$@") || fail "$name: curl failed"
  [ "${got%% *}" = "$expected" ] || { head -c 300 "$WORK/$name" >&2; echo >&2; fail "$name: HTTP ${got%% *}, expected $expected"; }
  echo "$got"
}

check healthz 200 "$url/healthz" >/dev/null
say "GET /healthz: 200"

result=$(check vocode 200 -H 'Content-Type: application/octet-stream' \
  --data-binary "@$WORK/mel.npy" "$url/v1/vocode?format=wav")
read -r _ content_type latency <<<"$result"
latency=$(printf '%.3f' "$latency")
case "$content_type" in audio/wav*|audio/x-wav*) ;; *) fail "vocode: Content-Type $content_type, expected audio/wav" ;; esac
wav_report=$(python3 - "$WORK/vocode" "$frames" "$HOP" "$SAMPLE_RATE" <<'EOF'
import array, sys, wave
path, frames, hop, rate = sys.argv[1], *map(int, sys.argv[2:])
with wave.open(path, "rb") as w:
    channels, width, got_rate, n = w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()
    data = w.readframes(n)
problems = []
if channels != 1: problems.append(f"{channels} channels, expected 1")
if got_rate != rate: problems.append(f"{got_rate} Hz, expected {rate}")
if n != frames * hop: problems.append(f"{n} samples, expected {frames} frames x {hop} = {frames * hop}")
peak = max(map(abs, array.array("h", data))) / 32768 if width == 2 and data else None
if peak == 0: problems.append("all samples are zero")
if problems: sys.exit("; ".join(problems))
print(f"{n} samples = {frames} x {hop}, {got_rate} Hz, {channels} ch, {8 * width}-bit"
      + (f", peak {peak:.3f}" if peak is not None else ""))
EOF
) || fail "vocode: bad WAV: $wav_report"
say "POST /v1/vocode: 200 $content_type, $wav_report, ${latency} s"

status=$(curl -s -o "$WORK/bad_input" -w '%{http_code}' -H 'Content-Type: application/octet-stream' \
  --data-binary 'not a mel' "$url/v1/vocode?format=wav")
case "$status" in 4??) say "POST /v1/vocode with a bad body: $status" ;; *) fail "a bad body got HTTP $status, expected 4xx" ;; esac

check metrics 200 "$url/metrics" >/dev/null
grep -q '^# TYPE ' "$WORK/metrics" || fail "/metrics: no Prometheus text"
grep -Eq '^vocoder_http_requests_total\{.*endpoint="/v1/vocode".*status="200".*\} [1-9]' "$WORK/metrics" \
  || fail "/metrics: the vocode request is not counted"
audio_seconds=$(awk '$1 == "vocoder_audio_seconds_total" { print $2 }' "$WORK/metrics")
say "GET /metrics: 200, $(grep -c '^# TYPE ' "$WORK/metrics") metric families, vocode counted, vocoder_audio_seconds_total ${audio_seconds:-?}"

deadline=$(( $(date +%s) + 60 ))
until [ "$(docker inspect -f '{{.State.Health.Status}}' "$cid")" = healthy ]; do
  [ "$(date +%s)" -lt "$deadline" ] || fail "HEALTHCHECK: status $(docker inspect -f '{{.State.Health.Status}}' "$cid") after 60 s"
  sleep 1
done
say "HEALTHCHECK: healthy"

uid=$(docker exec "$cid" id -u)
[ "$uid" != 0 ] || fail "the service runs as root"
espeak=$(docker exec "$cid" espeak-ng --version | sed -n '1s/ *Data at.*//p') || fail "espeak-ng missing"
bundled=$(docker exec "$cid" python3 -c 'from vocoder.pretrained import default_checkpoint; print(default_checkpoint() or "")')
say "runs as uid $uid; $espeak; bundled checkpoint: ${bundled:-NONE (random-init model, see the container log)}"

started=$(now)
docker stop -t 30 "$cid" >/dev/null
stop_time=$(seconds_since "$started")
exit_code=$(docker inspect -f '{{.State.ExitCode}}' "$cid")
[ "$exit_code" = 0 ] || { docker logs --tail 20 "$cid" >&2; fail "exit code $exit_code after SIGTERM"; }
say "docker stop: clean exit in $stop_time s"

say "image $IMAGE: $size_mb MB; cold start $cold_start s; vocode $frames frames in $latency s"
echo "smoke test passed"
