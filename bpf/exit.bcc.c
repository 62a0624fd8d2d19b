// SPDX-License-Identifier: GPL-2.0
/* procmon bcc probe: the same records as exit.bpf.c, for kernels without BTF.
 *
 * bcc compiles this text at start-up against the running kernel's headers, so every
 * task_struct offset comes from those headers: procmon.probe.bcc_guard checks them against
 * BTF (or the headers' version) before the program is attached.
 *
 * The knobs are -D macros set by procmon.probe.bcc (constants, so clang folds the unused
 * filters away, as the CO-RE program's const volatile globals do after load):
 *   PROCMON_PER_THREAD, PROCMON_FAILED_ONLY  0 or 1
 *   PROCMON_TARGET_PIDNS, PROCMON_SELF_TGID  0 = off
 *   PROCMON_SELF_PIDNS                       the agent's pid namespace (with SELF_TGID)
 *   PROCMON_WAKEUP_BYTES                     batch wakeups: force one after this many
 *                                            bytes queued by one CPU (see below)...
 *   PROCMON_WAKEUP_NS                        ...or when its last one is this old
 *   PROCMON_RING_PAGES                       ring size in pages, a power of two
 *   PROCMON_TP_GROUP_DEAD                    defined when the tracepoint has group_dead
 *   PROCMON_OFFSETS_ONLY                     defined by the guard: headers only, no probe
 */
#include <linux/sched.h>
#include <linux/sched/signal.h>
#include <linux/sched/cputime.h>
#include <linux/mm_types.h>
#include <linux/cred.h>
#include <linux/pid.h>
#include <linux/pid_namespace.h>
#include "exit_record.h"

#ifndef PROCMON_OFFSETS_ONLY

#ifndef PROCMON_RING_PAGES
#define PROCMON_RING_PAGES 1024
#endif
#ifndef PROCMON_WAKEUP_BYTES
#define PROCMON_WAKEUP_BYTES 32768
#endif
#ifndef PROCMON_PER_THREAD
#define PROCMON_PER_THREAD 0
#endif
#ifndef PROCMON_FAILED_ONLY
#define PROCMON_FAILED_ONLY 0
#endif
#ifndef PROCMON_TARGET_PIDNS
#define PROCMON_TARGET_PIDNS 0
#endif
#ifndef PROCMON_SELF_TGID
#define PROCMON_SELF_TGID 0
#endif
#ifndef PROCMON_SELF_PIDNS
#define PROCMON_SELF_PIDNS 0
#endif
#ifndef PROCMON_WAKEUP_NS
#define PROCMON_WAKEUP_NS 10000000
#endif

/* Explicit reads: bcc's implicit rewriting of a->b->c is convenient but hides which
 * loads happen; one READ per field keeps the list the guard checks easy to audit. */
#define PM_READ(dst, src) bpf_probe_read_kernel(&(dst), sizeof(dst), &(src))

BPF_RINGBUF_OUTPUT(events, PROCMON_RING_PAGES);
BPF_PERCPU_ARRAY(counters, u64, PROCMON_CNT_MAX);
/* bcc 0.26 has no map method for bpf_ringbuf_query() and no other way to name the ring in
 * a helper call, so wakeups are batched per CPU instead: each CPU forces one after it has
 * queued PROCMON_WAKEUP_BYTES since its last, or when that is PROCMON_WAKEUP_NS old (a
 * trickle is not held back). procmon.probe.bcc divides the configured wakeup_bytes by the
 * number of CPUs, so at most about that much waits for a wakeup, as with the CO-RE probe. */
struct unwoken_t {
	u64 bytes;
	u64 last_ns;
};
BPF_PERCPU_ARRAY(unwoken, struct unwoken_t, 1);
#ifndef PROCMON_TP_GROUP_DEAD
/* Processes already reported, keyed by (signal_struct, leader start time): on kernels
 * whose tracepoint lacks group_dead, two threads dying together can both see live == 0.
 * The first to insert wins; LRU eviction only forgets processes long gone. */
struct group_key {
	u64 signal;
	u64 start;
};
BPF_TABLE("lru_hash", struct group_key, u8, reported, 16384);
#endif

static __always_inline void count(u32 slot)
{
	u64 *val = counters.lookup(&slot);

	if (val)
		*val += 1;
}

/* The pid namespace a task lives in and its number there (task_active_pid_ns). */
static __always_inline void pid_ns_of(struct task_struct *task, u32 *inum, u32 *nr)
{
	struct pid *pid = NULL;
	struct upid upid = {};
	struct pid_namespace *ns;
	unsigned int level = 0, num = 0;

	PM_READ(pid, task->thread_pid);
	if (!pid)
		return;
	PM_READ(level, pid->level);
	bpf_probe_read_kernel(&upid, sizeof(upid), &pid->numbers[level]);
	ns = upid.ns;
	if (ns)
		PM_READ(num, ns->ns.inum);
	*inum = num;
	*nr = upid.nr;
}

static __always_inline u64 max_rss_pages(struct task_struct *task, struct signal_struct *sig)
{
	struct mm_struct *mm = NULL;
	unsigned long rss = 0, hiwater = 0;

	PM_READ(rss, sig->maxrss);
	PM_READ(mm, task->mm);
	if (!mm)
		return rss;
	PM_READ(hiwater, mm->hiwater_rss);
	return hiwater > rss ? hiwater : rss;
}

#ifndef PROCMON_TP_GROUP_DEAD
static __always_inline bool first_report(struct signal_struct *sig, struct task_struct *leader)
{
	struct group_key key = {.signal = (u64)sig};
	u8 one = 1;

	PM_READ(key.start, leader->start_boottime);
	/* -EEXIST: another thread of this group reported it; any other error: report. */
	return reported.insert(&key, &one) != -EEXIST;
}
#endif

/* What wait(2) would return for the process: the group exit code when the group was killed
 * or called exit_group, otherwise the leader's own code (the leader may have exited first). */
static __always_inline u32 process_status(struct task_struct *leader, struct signal_struct *sig)
{
	unsigned int flags = 0;
	u32 code = 0;

	PM_READ(flags, sig->flags);
	if (flags & SIGNAL_GROUP_EXIT)
		PM_READ(code, sig->group_exit_code);
	else
		PM_READ(code, leader->exit_code);
	return code;
}

static __always_inline void emit(struct task_struct *task, struct task_struct *leader,
				 struct signal_struct *sig, bool process, u32 code, u32 pidns,
				 u32 ns_pid)
{
	struct task_struct *parent = NULL;
	const struct cred *cred = NULL;
	struct exit_record *rec;
	u64 pid_tgid = bpf_get_current_pid_tgid(), a = 0, b = 0;
	struct unwoken_t *queued;
	u32 zero = 0, wake = BPF_RB_FORCE_WAKEUP;

	rec = events.ringbuf_reserve(sizeof(*rec));
	if (!rec) {
		count(PROCMON_CNT_DROPPED);
		return;
	}
	rec->ts_boot_ns = bpf_ktime_get_boot_ns();
	rec->pid = pid_tgid >> 32;
	rec->tid = (u32)pid_tgid;
	PM_READ(parent, task->real_parent);
	rec->ppid = 0;
	if (parent)
		PM_READ(rec->ppid, parent->tgid);
	PM_READ(cred, task->real_cred);
	rec->uid = 0;
	rec->gid = 0;
	if (cred) {
		PM_READ(rec->uid, cred->uid.val);
		PM_READ(rec->gid, cred->gid.val);
	}
	rec->exit_code = code;
	rec->pidns_inode = pidns;
	rec->ns_pid = ns_pid;
	rec->cgroup_id = bpf_get_current_cgroup_id();
	rec->max_rss_pages = max_rss_pages(task, sig);
	rec->flags = process ? PROCMON_F_GROUP_DEAD : PROCMON_F_THREAD;
	rec->_pad = 0;
	bpf_get_current_comm(rec->comm, sizeof(rec->comm));

	if (process) {
		/* Threads already gone were folded into signal_struct; a leader that exited
		 * first is a zombie whose times are not folded yet. */
		PM_READ(rec->start_boot_ns, leader->start_boottime);
		PM_READ(a, sig->utime);
		PM_READ(b, task->utime);
		rec->utime_ns = a + b;
		PM_READ(a, sig->stime);
		PM_READ(b, task->stime);
		rec->stime_ns = a + b;
		PM_READ(a, sig->sum_sched_runtime);
		PM_READ(b, task->se.sum_exec_runtime);
		rec->runtime_ns = a + b;
		if (leader != task) {
			PM_READ(a, leader->utime);
			rec->utime_ns += a;
			PM_READ(a, leader->stime);
			rec->stime_ns += a;
			PM_READ(a, leader->se.sum_exec_runtime);
			rec->runtime_ns += a;
		}
	} else {
		PM_READ(rec->start_boot_ns, task->start_boottime);
		PM_READ(rec->utime_ns, task->utime);
		PM_READ(rec->stime_ns, task->stime);
		PM_READ(rec->runtime_ns, task->se.sum_exec_runtime);
	}

	count(PROCMON_CNT_EMITTED);
	queued = unwoken.lookup(&zero);
	if (queued) {
		queued->bytes += sizeof(*rec);
		if (queued->bytes >= PROCMON_WAKEUP_BYTES ||
		    rec->ts_boot_ns - queued->last_ns >= PROCMON_WAKEUP_NS) {
			queued->bytes = 0;
			queued->last_ns = rec->ts_boot_ns;
		} else {
			wake = BPF_RB_NO_WAKEUP;
		}
	}
	events.ringbuf_submit(rec, wake);
}

/* Every thread exit passes here; per-thread adds a thread record to the process record
 * that the group's last thread produces. */
static __always_inline int handle_exit(struct task_struct *task, bool group_dead)
{
	struct task_struct *leader = NULL;
	struct signal_struct *sig = NULL;
	u32 pidns = 0, ns_pid = 0, code = 0;

	if (!PROCMON_PER_THREAD && !group_dead)
		return 0;
	PM_READ(leader, task->group_leader);
	PM_READ(sig, task->signal);
	pid_ns_of(leader, &pidns, &ns_pid);
	if (PROCMON_TARGET_PIDNS && pidns != PROCMON_TARGET_PIDNS)
		return 0;
	/* The agent itself: its pid as it sees it, in its namespace (containers). */
	if (PROCMON_SELF_TGID && ns_pid == PROCMON_SELF_TGID && pidns == PROCMON_SELF_PIDNS)
		return 0;

	if (PROCMON_PER_THREAD) {
		PM_READ(code, task->exit_code);
		if (!PROCMON_FAILED_ONLY || code)
			emit(task, leader, sig, false, code, pidns, ns_pid);
	}
	if (group_dead) {
		code = process_status(leader, sig);
		if (!PROCMON_FAILED_ONLY || code)
			emit(task, leader, sig, true, code, pidns, ns_pid);
	}
	return 0;
}

/* The exit tracepoint's two arguments: the task (always current) and, on kernels whose
 * tracepoint has it, group_dead. */
static __always_inline int on_exit(int group_dead_arg)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	bool group_dead;

#ifdef PROCMON_TP_GROUP_DEAD
	group_dead = group_dead_arg;
#else
	/* Older kernels: two threads dying together can both see live == 0; the one
	 * that loses first_report() is a plain thread exit. */
	struct task_struct *leader = NULL;
	struct signal_struct *sig = NULL;
	int live = 1;

	PM_READ(sig, task->signal);
	PM_READ(live, sig->live.counter);
	PM_READ(leader, task->group_leader);
	group_dead = live == 0 && first_report(sig, leader);
#endif
	return handle_exit(task, group_dead);
}

/* Both entry points are attached by procmon.probe.bcc only after the offset guard passed
 * (not TRACEPOINT_PROBE, whose autoload would attach before the guard could refuse).
 *
 * Preferred: the raw tracepoint (4.17+), attached through bpf() alone. A classic tracepoint
 * is attached through perf_event_open(), which Debian's kernels (perf_event_paranoid=3)
 * allow only with CAP_SYS_ADMIN, not with CAP_PERFMON. */
int procmon_exit_raw(struct bpf_raw_tracepoint_args *ctx)
{
#ifdef PROCMON_TP_GROUP_DEAD
	return on_exit((int)ctx->args[1]);
#else
	return on_exit(0);
#endif
}

/* Fallback: the classic tracepoint; bcc generates its struct from tracefs. */
int procmon_exit(struct tracepoint__sched__sched_process_exit *args)
{
#ifdef PROCMON_TP_GROUP_DEAD
	return on_exit(args->group_dead);
#else
	return on_exit(0);
#endif
}

#endif /* PROCMON_OFFSETS_ONLY */
