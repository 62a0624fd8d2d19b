// SPDX-License-Identifier: GPL-2.0
/* procmon CO-RE probe: one record per process exit (or per thread exit on request).
 * Filters run in the kernel, set before load as const volatile knobs, so that
 * unwanted exits never cost a ring-buffer record or a wakeup. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>
#include "exit_record.h"

#define SIGNAL_GROUP_EXIT 0x00000004

const volatile bool per_thread = false;   /* report every thread exit, not only group ends */
const volatile bool failed_only = false;  /* drop exits with status 0 and no signal */
const volatile __u32 target_pidns = 0;    /* pid-namespace inode to scope to; 0 = all */
const volatile __u64 wakeup_bytes = 32768;/* batch wakeups until this much is queued... */
const volatile __u64 wakeup_ns = 10000000;/* ...or until the oldest unannounced record is this old */

__u64 last_wakeup_ns; /* racy across CPUs on purpose: an extra wakeup is harmless */

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4 << 20); /* userspace resizes before load */
} events SEC(".maps");

/* The agent itself, never reported: its pid as seen in its own pid namespace (containers)
 * and that namespace. A map, not a knob: a pinned probe outlives the agent that set it. */
struct self_id {
	__u32 tgid;
	__u32 pidns;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct self_id);
} self_id SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, PROCMON_CNT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

/* Processes already reported, keyed by (signal_struct, leader start time). Only kernels
 * whose tracepoint lacks group_dead (e.g. 6.1) use it: two threads dying together can
 * both see signal->live == 0. The first to insert wins; LRU eviction forgets only
 * processes long gone. */
struct group_key {
	__u64 signal;
	__u64 start;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct group_key);
	__type(value, __u8);
} reported SEC(".maps");

static __always_inline bool first_report(struct task_struct *task)
{
	struct group_key key = {
		.signal = (__u64)task->signal,
		.start = BPF_CORE_READ(task, group_leader, start_boottime),
	};
	__u8 one = 1;

	/* -EEXIST: another thread of this group reported it; any other error: report. */
	return bpf_map_update_elem(&reported, &key, &one, BPF_NOEXIST) != -17;
}

/* group_dead as the 6.x tracepoint passes it, or the fallback for older kernels. */
static __always_inline bool fallback_group_dead(struct task_struct *task)
{
	return BPF_CORE_READ(task, signal, live.counter) == 0 && first_report(task);
}

static __always_inline void count(__u32 slot)
{
	__u64 *val = bpf_map_lookup_elem(&counters, &slot);

	if (val)
		*val += 1;
}

/* The pid namespace a task lives in and its number there (task_active_pid_ns). */
static __always_inline void pid_ns_of(struct task_struct *task, __u32 *inum, __u32 *nr)
{
	struct pid *pid = BPF_CORE_READ(task, thread_pid);
	unsigned int level = BPF_CORE_READ(pid, level);

	*inum = BPF_CORE_READ(pid, numbers[level].ns, ns.inum);
	*nr = BPF_CORE_READ(pid, numbers[level].nr);
}

static __always_inline __u64 max_rss_pages(struct task_struct *task)
{
	__u64 rss = BPF_CORE_READ(task, signal, maxrss);
	struct mm_struct *mm = BPF_CORE_READ(task, mm);
	__u64 hiwater;

	if (!mm)
		return rss;
	hiwater = BPF_CORE_READ(mm, hiwater_rss);
	return hiwater > rss ? hiwater : rss;
}

/* What wait(2) would return for the process: the group exit code when the group was killed
 * or called exit_group, otherwise the leader's own code (the leader may have exited first). */
static __always_inline __u32 process_status(struct task_struct *task)
{
	struct signal_struct *sig = task->signal;

	if (BPF_CORE_READ(sig, flags) & SIGNAL_GROUP_EXIT)
		return BPF_CORE_READ(sig, group_exit_code);
	return BPF_CORE_READ(task, group_leader, exit_code);
}

static __always_inline void emit(struct task_struct *task, bool process, __u32 code,
				 __u32 pidns, __u32 ns_pid)
{
	struct task_struct *leader = task->group_leader;
	struct signal_struct *sig = task->signal;
	struct exit_record *rec;
	__u64 queued;

	rec = bpf_ringbuf_reserve(&events, sizeof(*rec), 0);
	if (!rec) {
		count(PROCMON_CNT_DROPPED);
		return;
	}
	rec->ts_boot_ns = bpf_ktime_get_boot_ns();
	rec->pid = task->tgid;
	rec->tid = task->pid;
	rec->ppid = BPF_CORE_READ(task, real_parent, tgid);
	rec->uid = BPF_CORE_READ(task, real_cred, uid.val);
	rec->gid = BPF_CORE_READ(task, real_cred, gid.val);
	rec->exit_code = code;
	rec->pidns_inode = pidns;
	rec->ns_pid = ns_pid;
	rec->cgroup_id = bpf_get_current_cgroup_id();
	rec->max_rss_pages = max_rss_pages(task);
	rec->flags = process ? PROCMON_F_GROUP_DEAD : PROCMON_F_THREAD;
	rec->_pad = 0;
	bpf_get_current_comm(rec->comm, sizeof(rec->comm));

	if (process) {
		/* Threads already gone were folded into signal_struct; a leader that exited
		 * first is a zombie whose times are not folded yet. */
		rec->start_boot_ns = BPF_CORE_READ(leader, start_boottime);
		rec->utime_ns = BPF_CORE_READ(sig, utime) + task->utime;
		rec->stime_ns = BPF_CORE_READ(sig, stime) + task->stime;
		rec->runtime_ns = BPF_CORE_READ(sig, sum_sched_runtime) + task->se.sum_exec_runtime;
		if (leader != task) {
			rec->utime_ns += BPF_CORE_READ(leader, utime);
			rec->stime_ns += BPF_CORE_READ(leader, stime);
			rec->runtime_ns += BPF_CORE_READ(leader, se.sum_exec_runtime);
		}
	} else {
		rec->start_boot_ns = task->start_boottime;
		rec->utime_ns = task->utime;
		rec->stime_ns = task->stime;
		rec->runtime_ns = task->se.sum_exec_runtime;
	}

	count(PROCMON_CNT_EMITTED);
	/* Batching keeps storms cheap; the time bound keeps a slow trickle from waiting
	 * for userspace's poll timeout. */
	queued = bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA);
	if (queued >= wakeup_bytes || rec->ts_boot_ns - last_wakeup_ns >= wakeup_ns) {
		last_wakeup_ns = rec->ts_boot_ns;
		bpf_ringbuf_submit(rec, BPF_RB_FORCE_WAKEUP);
	} else {
		bpf_ringbuf_submit(rec, BPF_RB_NO_WAKEUP);
	}
}

/* Every thread exit passes here; per_thread adds a thread record to the process record
 * that the group's last thread produces. */
static __always_inline int handle_exit(bool group_dead)
{
	struct task_struct *task = bpf_get_current_task_btf();
	__u32 pidns, ns_pid, code, zero = 0;
	struct self_id *self;

	if (!per_thread && !group_dead)
		return 0;
	pid_ns_of(task->group_leader, &pidns, &ns_pid);
	if (target_pidns && pidns != target_pidns)
		return 0;
	self = bpf_map_lookup_elem(&self_id, &zero);
	if (self && self->tgid && ns_pid == self->tgid && pidns == self->pidns)
		return 0;

	if (per_thread) {
		code = task->exit_code;
		if (!failed_only || code)
			emit(task, false, code, pidns, ns_pid);
	}
	if (group_dead) {
		code = process_status(task);
		if (!failed_only || code)
			emit(task, true, code, pidns, ns_pid);
	}
	return 0;
}

SEC("tp_btf/sched_process_exit")
int BPF_PROG(exit_btf, struct task_struct *p)
{
	bool group_dead;

	/* Newer 6.x kernels pass group_dead; older ones need the signal->live fallback. */
	if (bpf_core_field_exists(struct trace_event_raw_sched_process_exit, group_dead))
		group_dead = (bool)ctx[1];
	else
		group_dead = fallback_group_dead(p);
	return handle_exit(group_dead);
}

SEC("tracepoint/sched/sched_process_exit")
int exit_tp(void *ctx)
{
	struct task_struct *task = bpf_get_current_task_btf();
	bool group_dead;

	if (bpf_core_field_exists(struct trace_event_raw_sched_process_exit, group_dead))
		group_dead = ((struct trace_event_raw_sched_process_exit *)ctx)->group_dead;
	else
		group_dead = fallback_group_dead(task);
	return handle_exit(group_dead);
}

char LICENSE[] SEC("license") = "GPL";
