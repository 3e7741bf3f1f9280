#!/usr/bin/env bash
# Starts a one-node Slurm cluster on localhost (Debian's slurm-wlm + munge), for tests/slurm.rs.
# Needs root. Installs the packages when missing, writes a one-node slurm.conf (proctrack/linuxproc,
# task/none: no cgroups; no accounting database), starts munged, slurmctld and slurmd, and exits 0
# once `sinfo` shows the node up. Does nothing when sinfo already answers. Daemons it started are
# listed in /run/rkd-ci-slurm.started, which .ci/stop-slurm.sh reads.
set -eu
if sinfo -h >/dev/null 2>&1; then echo "slurm already up"; exit 0; fi
if [ "$(id -u)" != 0 ]; then echo "not root: cannot install and start Slurm"; exit 1; fi
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq slurm-wlm munge >/dev/null
fi
host=$(hostname -s)
cpus=$(nproc)
mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
mkdir -p /etc/munge /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/munge /etc/slurm
[ -s /etc/munge/munge.key ] || dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 2>/dev/null
chown -R munge:munge /etc/munge /run/munge 2>/dev/null || true
chmod 400 /etc/munge/munge.key
: > /run/rkd-ci-slurm.started
if ! pgrep -x munged >/dev/null; then
  runuser -u munge -- /usr/sbin/munged --force 2>/dev/null || /usr/sbin/munged --force
  echo munged >> /run/rkd-ci-slurm.started
fi
cat > /etc/slurm/slurm.conf <<CONF
ClusterName=local
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
JobAcctGatherType=jobacct_gather/none
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
/usr/sbin/slurmctld
/usr/sbin/slurmd
echo slurm >> /run/rkd-ci-slurm.started
for _ in $(seq 30); do
  sinfo -h -o %T 2>/dev/null | grep -qE "idle|mix|alloc" && { echo "slurm up: $(sinfo -h -o '%N %T %c cpus')"; exit 0; }
  sleep 1
done
echo "slurm did not come up"
tail -5 /var/log/slurm/slurmctld.log /var/log/slurm/slurmd.log || true
exit 1
