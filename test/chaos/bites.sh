#!/bin/bash
# SPDX-License-Identifier: Apache-2.0
# test/chaos/bites.sh: proof that the chaos harness (cmd/proxychaos) bites.
#
# Each patch in test/chaos/ puts back one defect the harness found. For each,
# this builds socket-proxyd from a copy of the tree with the patch applied
# and runs proxychaos with a recorded seed and a focus on that defect: the
# run must FAIL (the table gives how many failures its oracle reported:
# the margin). The same command against the tree as it is must PASS. The
# caller's checkout is only read: the copies, the builds and the runs live
# in a temporary directory, removed at the end.
#
#   test/chaos/bites.sh              all of them (make chaos-bites)
#   test/chaos/bites.sh flow-flood   the named ones only
#   JOBS=1 test/chaos/bites.sh       one run at a time (default 3)
#   KEEP=1 test/chaos/bites.sh       keep the directory with every run's output
#
# A patch that no longer applies fails the script: refresh it against the
# code it reverts.
set -euo pipefail

cd "$(dirname "$0")/../.."
root=$PWD
GO=${GO:-go}
JOBS=${JOBS:-3}

# name|defect|seed|proxychaos flags: the focus that finds it within the run.
cases=(
	"urgent-byte|a TCP urgent byte truncates the stream|1|-duration 8s -rate 10 -mix tcp=1 -events none"
	"descriptors|descriptors stall a unix stream|5|-duration 8s -rate 20 -mix unix=1 -events none"
	"sighup-burst|a SIGHUP burst kills the proxy|6|-duration 15s -rate 5 -mix tcp=3,unix=1 -events sighup-burst=1 -event-rate 2"
	"oversized-datagram|an oversized datagram drops its batch|4|-duration 8s -rate 15 -mix udp6=1 -events none"
	"empty-seqpacket|an empty seqpacket message ends it|2|-duration 8s -rate 15 -mix seqpacket=1 -events none"
	"flow-flood|a flow flood locks streams out|5|-duration 10s -rate 5 -mix tcp=3,flood=1 -events none"
	"unix-peer-gone|a unix peer that hangs up loses its answer's end|2|-duration 8s -rate 20 -mix unix=1,seqpacket=2 -events none"
	"parked-message|a seqpacket message parked at a reload is lost|1|-duration 10s -rate 20 -mix seqpacket=1 -events stall-reload=1 -event-rate 2"
)
if (($# > 0)); then
	chosen=()
	for want in "$@"; do
		found=
		for c in "${cases[@]}"; do
			[[ ${c%%|*} == "$want" ]] && chosen+=("$c") && found=1
		done
		[[ -n $found ]] || { echo "bites.sh: no patch $want: want one of: $(ls test/chaos/*.patch | xargs -n1 basename | sed 's/\.patch$//' | tr '\n' ' ')" >&2; exit 2; }
	done
	cases=("${chosen[@]}")
fi

work=$(mktemp -d /tmp/chaos-bites.XXXXXX)
pids=()
cleanup() {
	# Only the runs this script started, each by its pid, then wait for them.
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
	if [[ -n ${KEEP:-} ]]; then echo "bites.sh: kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# copy TREE: the files of the caller's tree as they are (tracked ones and
# new ones git does not ignore), without .git.
copy() {
	mkdir -p "$1"
	git ls-files -z --cached --others --exclude-standard | tar --null -T - -cf - | tar -xf - -C "$1"
}

start=$SECONDS
echo "=== building proxychaos and socket-proxyd (as is, and with each patch)"
copy "$work/src"
(cd "$work/src" && "$GO" build -o "$work/proxychaos" ./cmd/proxychaos && "$GO" build -o "$work/socket-proxyd" ./cmd/socket-proxyd)
for c in "${cases[@]}"; do
	IFS='|' read -r name _ <<<"$c"
	cp -a "$work/src" "$work/src-$name"
	if ! (cd "$work/src-$name" && git apply "$root/test/chaos/$name.patch"); then
		echo "bites.sh: test/chaos/$name.patch no longer applies to this tree: refresh it" >&2
		exit 1
	fi
	(cd "$work/src-$name" && "$GO" build -o "$work/socket-proxyd-$name" ./cmd/socket-proxyd)
	rm -rf "$work/src-$name"
done
echo "    built in $((SECONDS - start)) s"

# run NAME KIND BIN SEED FLAGS...: one proxychaos run, its exit status and
# time in NAME.KIND.{rc,time}.
run() {
	local name=$1 kind=$2 bin=$3 seed=$4
	shift 4
	local t0=$SECONDS rc=0 child
	# Its own directory (sockets, the binary, the proxy's log) under
	# $work too, so that a stopped run leaves nothing behind.
	TMPDIR=$work "$work/proxychaos" -bin "$bin" -seed "$seed" "$@" >"$work/$name.$kind.out" 2>&1 &
	child=$!
	# Stopped (cleanup), it stops its proxychaos and waits for it; the
	# proxy under test dies with proxychaos (Pdeathsig).
	trap 'kill "$child" 2>/dev/null; wait "$child"; exit 143' TERM
	wait "$child" || rc=$?
	echo "$rc" >"$work/$name.$kind.rc"
	echo "$((SECONDS - t0))" >"$work/$name.$kind.time"
}

echo "=== running ${#cases[@]} defects, each patched (must fail) and as is (must pass), $JOBS at a time"
jobs_=()
for c in "${cases[@]}"; do
	IFS='|' read -r name _ seed flags <<<"$c"
	jobs_+=("$name bite $work/socket-proxyd-$name $seed $flags")
	jobs_+=("$name pass $work/socket-proxyd $seed $flags")
done
for j in "${jobs_[@]}"; do
	while (($(jobs -rp | wc -l) >= JOBS)); do wait -n || true; done
	# shellcheck disable=SC2086 # the flags are words
	run $j &
	pids+=($!)
done
for p in "${pids[@]}"; do wait "$p" || true; done
pids=()

# verdict NAME KIND: "fails" (the oracle found something), "passes", or
# "error N" (the run itself went wrong: no verdict of the oracle).
verdict() {
	local out=$work/$1.$2.out rc
	rc=$(cat "$work/$1.$2.rc")
	if [[ $rc == 0 ]] && grep -q '^PASS$' "$out"; then
		echo passes
	elif [[ $rc == 1 ]] && grep -q '^FAIL: seed' "$out"; then
		echo fails
	else
		echo "error $rc"
	fi
}

# failures NAME KIND: how many failures the run's oracle reported.
failures() {
	awk '$1 == "failures" && $2 ~ /^[0-9]+$/ { print $2; exit }' "$work/$1.$2.out"
}

bad=0
printf '\n%-20s %-4s %-20s %-16s %s\n' defect seed patched "as is" command
for c in "${cases[@]}"; do
	IFS='|' read -r name what seed flags <<<"$c"
	b=$(verdict "$name" bite) p=$(verdict "$name" pass)
	bt=$(cat "$work/$name.bite.time") pt=$(cat "$work/$name.pass.time")
	mark=
	[[ $b == fails && $p == passes ]] || { mark=' <-- WRONG'; bad=1; }
	[[ $b == fails ]] && b="fails: $(failures "$name" bite)"
	printf '%-20s %-4s %-20s %-16s proxychaos -seed %s %s%s\n' "$name" "$seed" "$b (${bt}s)" "$p (${pt}s)" "$seed" "$flags" "$mark"
done
echo "total $((SECONDS - start)) s"

if ((bad)); then
	for c in "${cases[@]}"; do
		IFS='|' read -r name what seed flags <<<"$c"
		b=$(verdict "$name" bite) p=$(verdict "$name" pass)
		if [[ $b != fails ]]; then
			echo; echo "--- $name ($what): the patched proxy should fail, but it $b; the end of its run:"
			tail -n 40 "$work/$name.bite.out"
		fi
		if [[ $p != passes ]]; then
			echo; echo "--- $name ($what): the proxy as it is should pass, but it $p; its failures:"
			sed -n '/^failures:/,/^proxy log/p' "$work/$name.pass.out" | head -n 40
			tail -n 3 "$work/$name.pass.out"
		fi
	done
	exit 1
fi
echo "every patch bites, and the tree as it is passes"
