#!/usr/bin/env bash
# two_hosts.sh DSMOE SOURCE_DIR: the same forward on two "hosts": two network namespaces
# joined by a veth pair, with addresses that exist only inside them; OpenMPI over TCP between
# them (--mca btl tcp,self: no shared memory between the ranks). The namespaces are created and
# removed here. Needs root (ip netns); exits 77 (CTest: skipped) when namespaces cannot be made.
set -euo pipefail
dsmoe=$1 src=$2
here=$(cd "$(dirname "$0")" && pwd)
tag=dsmoe$$
a=${tag}a b=${tag}b
work=$(mktemp -d /tmp/dsmoe_two_hosts_XXXXXX)
cleanup() {
  ip netns del "$a" 2>/dev/null || true
  ip netns del "$b" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
if ! ip netns add "$a" 2>/dev/null; then echo "cannot create network namespaces: skipped"; exit 77; fi
ip netns add "$b"
ip link add "${tag}x" type veth peer name "${tag}y"
ip link set "${tag}x" netns "$a"
ip link set "${tag}y" netns "$b"
ip -n "$a" addr add 10.213.7.1/24 dev "${tag}x"
ip -n "$b" addr add 10.213.7.2/24 dev "${tag}y"
for ns in "$a" "$b"; do ip -n "$ns" link set lo up; done
ip -n "$a" link set "${tag}x" up
ip -n "$b" link set "${tag}y" up
# mpirun starts the remote daemon through this "ssh": run the command inside host b's namespace.
cat > "$work/agent" <<AGENT
#!/usr/bin/env bash
shift  # the host name
exec ip netns exec $b bash -c "\$*"
AGENT
chmod +x "$work/agent"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
model=$src/tests/data/v3-tiny/model
input=$src/tests/data/v3-tiny/expected.safetensors
"$dsmoe" forward --model "$model" --input "$input" --output "$work/one.st" --threads 1 2>/dev/null
ip netns exec "$a" mpirun --host 10.213.7.1:1,10.213.7.2:1 -np 2 \
  --mca plm_rsh_agent "$work/agent" --mca btl tcp,self --mca btl_tcp_if_include 10.213.7.0/24 \
  --mca oob_tcp_if_include 10.213.7.0/24 \
  "$dsmoe" forward --model "$model" --input "$input" --output "$work/two.st" --threads 1
python3 "$here/compare_safetensors.py" "$work/one.st" "$work/two.st"
echo "two hosts (network namespaces, TCP): forward bit-identical to one process"
