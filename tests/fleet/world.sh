#!/usr/bin/env bash
# A private network of Sparks for the fleet test: N hosts, each a real systemd (tests/sandbox/boot.sh)
# in its own network namespace with sshd and one address on a bridge, and this controller's side of
# the bridge; nothing here reaches any other network. Each host has root and an `admin` account
# (sudo password `fleet-test`) that take the controller's ssh key. Runs CMD in the controller's
# namespace with FLEET_HOSTS (addresses), FLEET_PIDS (each host's systemd), FLEET_CONTROLLER and
# FLEET_SSH_CONFIG (`ssh -F` file with the key) set, then stops every host.
# Root only. Usage: world.sh SHARE N CMD...
set -euo pipefail
if [ "${FLEET_INSIDE:-}" != 1 ]; then
  # A network namespace of its own: the bridge, the hosts' links and the bundle server live there.
  exec env FLEET_INSIDE=1 unshare --net --mount --propagation private bash "$0" "$@"
fi
share=$(realpath "$1")
n=$2
shift 2
here=$(cd "$(dirname "$0")" && pwd)
sandbox=$here/../sandbox
net=10.77.0

ip link set lo up
ip link add br0 type bridge
ip addr add "$net.1/24" dev br0
ip link set br0 up

pids=()
stop_all() {
  for p in "${pids[@]}"; do bash "$sandbox/stop.sh" "$p"; done
}
trap stop_all EXIT

mkdir -p "$share/ssh"
[ -f "$share/ssh/id_ed25519" ] || ssh-keygen -q -t ed25519 -N '' -C fleet-controller -f "$share/ssh/id_ed25519"
# One ssh config for every client here (this script, the test's checks, Ansible): the hosts are
# fresh sandboxes, so their host keys are neither known nor kept.
cat >"$share/ssh/config" <<CONF
Host *
  IdentityFile $share/ssh/id_ed25519
  BatchMode yes
  StrictHostKeyChecking no
  UserKnownHostsFile /dev/null
  LogLevel ERROR
  ConnectTimeout 5
CONF
addrs=()
for i in $(seq 1 "$n"); do
  dir=$share/host$i
  mkdir -p "$dir"
  bash "$sandbox/boot.sh" "$dir" "$dir/pid"
  pid=$(cat "$dir/pid")
  pids+=("$pid")
  addr=$net.$((10 + i))
  ip link add "veth$i" type veth peer name eth0 netns "$pid"
  ip link set "veth$i" master br0 up
  nsenter -t "$pid" -n ip addr add "$addr/24" dev eth0
  nsenter -t "$pid" -n ip link set eth0 up
  nsenter -t "$pid" -m -u sh -c "hostname spark$i; mkdir -p -m 700 /root/.ssh; cat >/root/.ssh/authorized_keys" <"$share/ssh/id_ed25519.pub"
  # An operator account as the seed's inventory has one: ssh key login, sudo with a password.
  nsenter -t "$pid" -m sh -c 'useradd -m -s /bin/bash admin && echo admin:fleet-test | chpasswd &&
    install -d -m 700 -o admin -g admin /home/admin/.ssh &&
    install -m 600 -o admin -g admin /root/.ssh/authorized_keys /home/admin/.ssh/authorized_keys &&
    echo "admin ALL=(ALL) ALL" >/etc/sudoers.d/admin && chmod 440 /etc/sudoers.d/admin'

  addrs+=("$addr")
done
for a in "${addrs[@]}"; do
  for _ in $(seq 1 100); do
    ssh -F "$share/ssh/config" -o ConnectTimeout=2 "root@$a" true && continue 2
    sleep 0.2
  done
  echo "sshd on $a did not answer" >&2
  exit 1
done
echo "fleet: ${#addrs[@]} hosts up (${addrs[*]}), controller $net.1" >&2
export FLEET_HOSTS="${addrs[*]}" FLEET_PIDS="${pids[*]}" FLEET_CONTROLLER=$net.1 FLEET_SSH_CONFIG=$share/ssh/config
set +e
"$@"
rc=$?
exit $rc
