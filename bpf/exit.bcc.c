// SPDX-License-Identifier: GPL-2.0
/* procmon bcc probe: the same records as exit.bpf.c, for kernels without BTF: an exit
 * record per process exit (or thread exit) and, with PROCMON_CAPTURE_EXEC, the context
 * records userspace joins to them (exec: executable and args; cgroup v2 mkdir and rmdir).
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
 *   PROCMON_TARGET_TGID                      only this process (host tgid); 0 = all
 *   PROCMON_TARGET_CGROUP                    only tasks in this cgroup v2 id or below; 0 = all
 *   PROCMON_TARGET_CGROUP_LEVEL              that cgroup's depth (the root is 0)
 *   PROCMON_WAKEUP_BYTES                     batch wakeups: force one after this many
 *                                            bytes queued by one CPU (see below)...
 *   PROCMON_WAKEUP_NS                        ...or when its last one is this old
 *   PROCMON_RING_PAGES                       ring size in pages, a power of two
 *   PROCMON_TP_GROUP_DEAD                    defined when the tracepoint has group_dead
 *   PROCMON_CAPTURE_EXEC                     0 or 1: compile the exec and cgroup programs
 *   PROCMON_CAPTURE_ARGS                     0 or 1: exec records carry argv
 *   PROCMON_CONTEXT_FILL_MAX                 context records only below this fill (bytes);
 *                                            0 = no limit (see context_admitted)
 *   PROCMON_CAPTURE_KILLER                   0 or 1: compile the signal and OOM programs
 *   PROCMON_OOM_TASK_ARG                     defined when mark_victim passes (task, uid)
 *   PROCMON_OFFSETS_ONLY                     defined by the guard: headers only, no probe
 */
#include <linux/sched.h>
#include <linux/sched/signal.h>
#include <linux/sched/cputime.h>
#include <linux/mm_types.h>
#include <linux/cred.h>
#include <linux/pid.h>
#include <linux/pid_namespace.h>
#include <linux/binfmts.h>
#include <linux/cgroup-defs.h>
#include <linux/kernfs.h>
#include "exit_record.h"

/* is_child_subreaper is a bitfield: C can neither take its address nor its offsetof, and
 * bcc does not rewrite a bitfield read through a kernel pointer (it emits a plain load the
 * verifier refuses). So the probe copies this many bytes from signal_struct.flags into the
 * same offsets of a scratch signal_struct and lets clang extract the bit there, with the
 * headers' own layout. The guard checks the bitfield's bit offset against BTF and that it
 * lies inside this window. */
#define PROCMON_SIG_WINDOW 32

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
#define PROCMON_WAKEUP_NS 40000000
#endif
#ifndef PROCMON_TARGET_TGID
#define PROCMON_TARGET_TGID 0
#endif
#ifndef PROCMON_TARGET_CGROUP
#define PROCMON_TARGET_CGROUP 0
#endif
#ifndef PROCMON_TARGET_CGROUP_LEVEL
#define PROCMON_TARGET_CGROUP_LEVEL 0
#endif
#ifndef PROCMON_CAPTURE_EXEC
#define PROCMON_CAPTURE_EXEC 0
#endif
#ifndef PROCMON_CAPTURE_ARGS
#define PROCMON_CAPTURE_ARGS 0
#endif
#ifndef PROCMON_CONTEXT_FILL_MAX
#define PROCMON_CONTEXT_FILL_MAX 0
#endif
#ifndef PROCMON_CAPTURE_KILLER
#define PROCMON_CAPTURE_KILLER 0
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
/* For the same reason the ring's fill is tracked here: slot 0 counts the bytes this probe has
 * queued (as the ring counts them: header included, 8-byte aligned), slot 1 is the ring's
 * consumer position as userspace writes it after each poll. Their difference can only
 * overstate the fill, by what was consumed since the last poll. */
#define RING_QUEUED 0
#define RING_CONSUMED 1
BPF_ARRAY(ring_pos, u64, 2);
/* The scratch signal_struct for the is_child_subreaper bit (see PROCMON_SIG_WINDOW): raw
 * bytes of its size, so that bcc describes a plain array rather than the kernel struct. */
struct sig_copy_t {
	u8 bytes[sizeof(struct signal_struct)];
};
BPF_PERCPU_ARRAY(sig_copy, struct sig_copy_t, 1);
_Static_assert(offsetof(struct signal_struct, flags) + PROCMON_SIG_WINDOW <=
		       sizeof(struct signal_struct),
	       "the is_child_subreaper window ends past signal_struct");
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
#if PROCMON_CAPTURE_EXEC
/* Context records are built here and sent trimmed (ringbuf_output): most command lines are
 * far shorter than PROCMON_ARGS_LEN, and the ring is shared with exits. */
BPF_PERCPU_ARRAY(exec_scratch, struct exec_record, 1);
BPF_PERCPU_ARRAY(cgroup_scratch, struct cgroup_record, 1);
#endif

#if PROCMON_CAPTURE_KILLER
/* The last fatal signal sent to each process (by tgid) until it exits, as in exit.bpf.c. */
BPF_TABLE("lru_hash", u32, struct killer, killers, 16384);
#endif

static __always_inline void count(u32 slot)
{
	u64 *val = counters.lookup(&slot);

	if (val)
		*val += 1;
}

static __always_inline void note_queued(u64 bytes)
{
	u32 slot = RING_QUEUED;
	u64 *queued = ring_pos.lookup(&slot);

	if (queued)
		__sync_fetch_and_add(queued, (bytes + 8 + 7) & ~7ULL);
}

/* Whether a context record of this many bytes may still enter the ring: past
 * PROCMON_CONTEXT_FILL_MAX the rest of the ring is kept for exits, so that no flood of
 * execs can cost an exit. Not admitted counts as a lost context record. */
static __always_inline bool context_admitted(u64 bytes)
{
#if PROCMON_CONTEXT_FILL_MAX
	u32 q = RING_QUEUED, c = RING_CONSUMED;
	u64 *queued = ring_pos.lookup(&q), *consumed = ring_pos.lookup(&c);

	if (queued && consumed && *queued - *consumed + bytes + 8 > PROCMON_CONTEXT_FILL_MAX) {
		count(PROCMON_CNT_CONTEXT_DROPPED);
		return false;
	}
#endif
	return true;
}

/* The flag for a record of this many bytes queued now (see unwoken above). */
static __always_inline u64 wakeup_flag(u64 bytes, u64 now)
{
	struct unwoken_t *queued;
	u32 zero = 0;

	queued = unwoken.lookup(&zero);
	if (!queued)
		return BPF_RB_FORCE_WAKEUP;
	queued->bytes += bytes;
	if (queued->bytes >= PROCMON_WAKEUP_BYTES || now - queued->last_ns >= PROCMON_WAKEUP_NS) {
		queued->bytes = 0;
		queued->last_ns = now;
		return BPF_RB_FORCE_WAKEUP;
	}
	return BPF_RB_NO_WAKEUP;
}

/* The agent itself and, with a pid-namespace scope, other namespaces are not reported. */
static __always_inline bool out_of_scope(u32 pidns, u32 ns_pid)
{
	if (PROCMON_TARGET_PIDNS && pidns != PROCMON_TARGET_PIDNS)
		return true;
	/* The agent: its pid as it sees it, in its namespace (containers). */
	return PROCMON_SELF_TGID && ns_pid == PROCMON_SELF_TGID && pidns == PROCMON_SELF_PIDNS;
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

/* signal->is_child_subreaper, read through the scratch copy (see PROCMON_SIG_WINDOW). An
 * unreadable answer counts as a reaper: the image owner is then left unknown. */
static __always_inline bool is_child_subreaper(struct signal_struct *sig)
{
	u32 zero = 0;
	struct sig_copy_t *copy = sig_copy.lookup(&zero);
	const u32 from = offsetof(struct signal_struct, flags);

	if (!copy || !sig)
		return true;
	if (bpf_probe_read_kernel(copy->bytes + from, PROCMON_SIG_WINDOW, (char *)sig + from))
		return true;
	return ((struct signal_struct *)copy->bytes)->is_child_subreaper;
}

/* Whose exec the process's image comes from, as exit.bpf.c's image_owner(): self_exec_id
 * counts a task's execs; fork copies it and records the parent's in parent_exec_id. So a
 * process that never exec'd has both equal, and its parent has not exec'd since the fork
 * when the parent's count still matches. A reaper (pid 1 of a namespace, a subreaper) may
 * have adopted the process: then the chain is broken and the owner unknown (0). */
static __always_inline void image_owner(struct task_struct *leader, struct exit_record *rec)
{
	struct task_struct *t = leader, *parent;
	struct signal_struct *psig;
	/* typeof: 32 bits before 5.7, 64 since; PM_READ copies sizeof(dst) */
	__typeof__(leader->parent_exec_id) parent_exec_id, self_exec_id, parent_self;
	u32 pidns, nr;

	rec->image_pid = 0;
	rec->image_start_ns = 0;
	rec->image_exec_id = 0;
	for (int i = 0; i < PROCMON_IMAGE_DEPTH; i++) {
		parent_exec_id = 0;
		self_exec_id = 1;
		PM_READ(parent_exec_id, t->parent_exec_id);
		PM_READ(self_exec_id, t->self_exec_id);
		if (self_exec_id != parent_exec_id) {
			PM_READ(rec->image_pid, t->tgid);
			PM_READ(rec->image_start_ns, t->start_boottime);
			rec->image_exec_id = self_exec_id;
			return;
		}
		parent = NULL;
		PM_READ(parent, t->real_parent);
		if (!parent)
			return;
		parent_self = parent_exec_id + 1;
		PM_READ(parent_self, parent->self_exec_id);
		if (parent_self != parent_exec_id)
			return;
		pidns = 0;
		nr = 1;
		pid_ns_of(parent, &pidns, &nr);
		psig = NULL;
		PM_READ(psig, parent->signal);
		if (nr == 1 || is_child_subreaper(psig))
			return;
		t = NULL;
		PM_READ(t, parent->group_leader);
		if (!t)
			return;
	}
}

/* The killer of a process that died of a signal: the last fatal signal recorded for it, if
 * that is the signal it died of. The entry is dropped either way: the process is gone. */
static __always_inline void fill_killer(struct exit_record *rec, u32 tgid, u32 status)
{
	rec->killer_flags = 0;
	rec->killer_pid = 0;
	rec->killer_uid = 0;
	rec->killer_code = 0;
	__builtin_memset(rec->killer_comm, 0, sizeof(rec->killer_comm));
#if PROCMON_CAPTURE_KILLER
	struct killer *k;

	if (!tgid)
		return;
	k = killers.lookup(&tgid);
	if (!k)
		return;
	if ((status & 0x7f) && k->sig == (status & 0x7f)) {
		rec->killer_flags = k->flags;
		rec->killer_pid = k->pid;
		rec->killer_uid = k->uid;
		rec->killer_code = k->code;
		__builtin_memcpy(rec->killer_comm, k->comm, sizeof(rec->killer_comm));
	}
	killers.delete(&tgid);
#endif
}

static __always_inline void emit(struct task_struct *task, struct task_struct *leader,
				 struct signal_struct *sig, bool process, u32 code, u32 pidns,
				 u32 ns_pid)
{
	struct task_struct *parent = NULL;
	const struct cred *cred = NULL;
	struct exit_record *rec;
	u64 pid_tgid = bpf_get_current_pid_tgid(), a = 0, b = 0;

	rec = events.ringbuf_reserve(sizeof(*rec));
	if (!rec) {
		count(PROCMON_CNT_DROPPED);
		return;
	}
	rec->kind = PROCMON_REC_EXIT;
	rec->ts_boot_ns = bpf_ktime_get_boot_ns();
	rec->pid = pid_tgid >> 32;
	rec->tid = (u32)pid_tgid;
	PM_READ(parent, task->real_parent);
	rec->ppid = 0;
	__builtin_memset(rec->parent_comm, 0, sizeof(rec->parent_comm));
	if (parent) {
		PM_READ(rec->ppid, parent->tgid);
		/* comm is always NUL-terminated within its TASK_COMM_LEN (16) bytes */
		PM_READ(rec->parent_comm, parent->comm);
	}
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
	image_owner(leader, rec);
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
		fill_killer(rec, rec->pid, code);
	} else {
		PM_READ(rec->start_boot_ns, task->start_boottime);
		PM_READ(rec->utime_ns, task->utime);
		PM_READ(rec->stime_ns, task->stime);
		PM_READ(rec->runtime_ns, task->se.sum_exec_runtime);
		fill_killer(rec, 0, 0); /* clears the fields */
	}

	count(PROCMON_CNT_EMITTED);
	note_queued(sizeof(*rec));
	events.ringbuf_submit(rec, wakeup_flag(sizeof(*rec), rec->ts_boot_ns));
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
	if (PROCMON_TARGET_TGID && (u32)(bpf_get_current_pid_tgid() >> 32) != PROCMON_TARGET_TGID)
		return 0;
	if (PROCMON_TARGET_CGROUP &&
	    bpf_get_current_ancestor_cgroup_id(PROCMON_TARGET_CGROUP_LEVEL) != PROCMON_TARGET_CGROUP)
		return 0;
	PM_READ(leader, task->group_leader);
	PM_READ(sig, task->signal);
	pid_ns_of(leader, &pidns, &ns_pid);
	if (out_of_scope(pidns, ns_pid))
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

#if PROCMON_CAPTURE_EXEC
/* The context programs: raw tracepoints only (their attach needs no perf_event_open); when
 * they do not load or attach, procmon.probe.bcc runs without context.
 *
 * sched_process_exec(p, old_pid, bprm), after the new image is set up: its argv sits in
 * the process's memory and p is current. Read both now, so that a process living a
 * millisecond still has them at exit. */
int procmon_exec_raw(struct bpf_raw_tracepoint_args *ctx)
{
	struct task_struct *p = (struct task_struct *)ctx->args[0];
	struct linux_binprm *bprm = (struct linux_binprm *)ctx->args[2];
	struct task_struct *leader = NULL;
	const char *filename = NULL;
	struct exec_record *rec;
	u32 zero = 0, pidns = 0, ns_pid = 0, size = 0;

	pid_ns_of(p, &pidns, &ns_pid);
	if (out_of_scope(pidns, ns_pid))
		return 0;
	rec = exec_scratch.lookup(&zero);
	if (!rec)
		return 0;
	rec->kind = PROCMON_REC_EXEC;
	rec->flags = 0;
	rec->ts_boot_ns = bpf_ktime_get_boot_ns();
	rec->start_boot_ns = 0;
	PM_READ(leader, p->group_leader);
	if (leader)
		PM_READ(rec->start_boot_ns, leader->start_boottime);
	rec->pid = bpf_get_current_pid_tgid() >> 32;
	rec->args_total = 0;
	rec->exec_id = 0;
	rec->_pad = 0;
	PM_READ(rec->exec_id, p->self_exec_id);
	PM_READ(filename, bprm->filename);
	/* on failure the helper zeroes the buffer: an empty name, never the previous one */
	bpf_probe_read_kernel_str(rec->filename, sizeof(rec->filename), filename);
#if PROCMON_CAPTURE_ARGS
	struct mm_struct *mm = NULL;
	unsigned long start = 0, end = 0;
	u64 total;

	PM_READ(mm, p->mm);
	if (mm) {
		PM_READ(start, mm->arg_start);
		PM_READ(end, mm->arg_end);
	}
	total = end > start ? end - start : 0;
	size = total < PROCMON_ARGS_LEN ? total : PROCMON_ARGS_LEN;
	if (total > PROCMON_ARGS_LEN)
		rec->flags |= PROCMON_F_ARGS_TRUNCATED;
	if (size > PROCMON_ARGS_LEN) /* for the verifier: never true */
		size = PROCMON_ARGS_LEN;
	if (bpf_probe_read_user(rec->args, size, (void *)start))
		size = 0;
	rec->args_total = total;
#else
	rec->flags |= PROCMON_F_NO_ARGS;
#endif
	rec->args_size = size;
	size += offsetof(struct exec_record, args);
	if (!context_admitted(size))
		return 0;
	if (events.ringbuf_output(rec, size, wakeup_flag(size, rec->ts_boot_ns)))
		count(PROCMON_CNT_CONTEXT_DROPPED);
	else
		note_queued(size);
	return 0;
}

/* cgroup_mkdir and cgroup_rmdir(cgrp, path). Only the default (v2) hierarchy, id 0: v1
 * hierarchies number their kernfs ids apart, and exits carry the v2 id. */
static __always_inline int emit_cgroup(struct cgroup *cgrp, const char *path, u32 kind)
{
	struct cgroup_root *root = NULL;
	struct cgroup_subsys_state *parent_css = NULL;
	struct cgroup *parent;
	struct kernfs_node *kn = NULL;
	struct cgroup_record *rec;
	int hierarchy_id = -1;
	u32 zero = 0;
	long size = 0;

	PM_READ(root, cgrp->root);
	if (!root)
		return 0;
	PM_READ(hierarchy_id, root->hierarchy_id);
	if (hierarchy_id != 0)
		return 0;
	rec = cgroup_scratch.lookup(&zero);
	if (!rec)
		return 0;
	rec->kind = kind;
	rec->id = 0;
	PM_READ(kn, cgrp->kn);
	if (kn)
		PM_READ(rec->id, kn->id);
	/* cgroup_parent(): the parent's css is its cgroup's "self" */
	rec->parent_id = 0;
	PM_READ(parent_css, cgrp->self.parent);
	if (parent_css) {
		parent = (struct cgroup *)((char *)parent_css - offsetof(struct cgroup, self));
		kn = NULL;
		PM_READ(kn, parent->kn);
		if (kn)
			PM_READ(rec->parent_id, kn->id);
	}
	if (path) {
		size = bpf_probe_read_kernel_str(rec->path, sizeof(rec->path), path);
		if (size < 0)
			size = 0;
		if (size > PROCMON_CGROUP_PATH_LEN)
			size = PROCMON_CGROUP_PATH_LEN;
	}
	rec->path_size = size;
	size += offsetof(struct cgroup_record, path);
	if (!context_admitted(size))
		return 0;
	if (events.ringbuf_output(rec, size, wakeup_flag(size, bpf_ktime_get_boot_ns())))
		count(PROCMON_CNT_CONTEXT_DROPPED);
	else
		note_queued(size);
	return 0;
}

int procmon_cgroup_mkdir_raw(struct bpf_raw_tracepoint_args *ctx)
{
	return emit_cgroup((struct cgroup *)ctx->args[0], (const char *)ctx->args[1],
			   PROCMON_REC_CGROUP_MKDIR);
}

/* The path is not needed on removal: userspace has it from the mkdir (or its seed). */
int procmon_cgroup_rmdir_raw(struct bpf_raw_tracepoint_args *ctx)
{
	return emit_cgroup((struct cgroup *)ctx->args[0], NULL, PROCMON_REC_CGROUP_RMDIR);
}
#endif /* PROCMON_CAPTURE_EXEC */

#if PROCMON_CAPTURE_KILLER
/* The killer programs, raw tracepoints attached beside the exit program as exit.bpf.c's
 * (see there). Whether sig ends the task when delivered: its action is the default, and the
 * default kills (not SIGCHLD, SIGCONT, SIGURG, SIGWINCH, nor a stop signal). */
static __always_inline bool kills_by_default(struct task_struct *task, int sig)
{
	struct sighand_struct *sighand = NULL;
	void *handler = (void *)1; /* SIG_IGN, if the read fails */

	if (sig == 9)
		return true;
	if (sig < 1 || sig > 64 || sig == 17 || sig == 18 || sig == 23 || sig == 28 ||
	    (sig >= 19 && sig <= 22))
		return false;
	PM_READ(sighand, task->sighand);
	if (!sighand)
		return false;
	PM_READ(handler, sighand->action[sig - 1].sa.sa_handler);
	return handler == NULL; /* SIG_DFL */
}

/* signal_generate(sig, info, task, group, result) */
int procmon_signal_raw(struct bpf_raw_tracepoint_args *ctx)
{
	int sig = (int)ctx->args[0], result = (int)ctx->args[4];
	unsigned long info = ctx->args[1];
	struct task_struct *task = (struct task_struct *)ctx->args[2];
	struct killer k = {}, *prev;
	bool kernel = true;
	u32 tgid = 0;

	if (result != 0 && result != 4) /* TRACE_SIGNAL_DELIVERED, TRACE_SIGNAL_LOSE_INFO */
		return 0;
	if (!kills_by_default(task, sig))
		return 0;
	if (info > 1) {
		PM_READ(k.code, ((struct kernel_siginfo *)info)->si_code);
		kernel = k.code != 0 && k.code != -1 && k.code != -6; /* SI_USER, SI_QUEUE, SI_TKILL */
	} else {
		k.code = info ? 0x80 : 0; /* SEND_SIG_PRIV: SI_KERNEL; SEND_SIG_NOINFO: SI_USER */
	}
	k.sig = sig;
	k.flags = PROCMON_K_KNOWN;
	if (kernel) {
		k.flags |= PROCMON_K_KERNEL;
	} else {
		k.pid = bpf_get_current_pid_tgid() >> 32;
		k.uid = (u32)bpf_get_current_uid_gid();
		bpf_get_current_comm(k.comm, sizeof(k.comm));
	}
	PM_READ(tgid, task->tgid);
	prev = killers.lookup(&tgid);
	if (prev && (prev->flags & PROCMON_K_OOM)) /* the OOM kill came first: it stays the cause */
		return 0;
	killers.update(&tgid, &k);
	return 0;
}

/* mark_victim, right after the OOM killer's SIGKILL: (pid), or (task, uid) on kernels whose
 * event has a uid field. */
int procmon_oom_raw(struct bpf_raw_tracepoint_args *ctx)
{
	struct killer k = {}, *prev;
	u32 tgid = 0;
#ifdef PROCMON_OOM_TASK_ARG
	struct task_struct *task = (struct task_struct *)ctx->args[0];

	PM_READ(tgid, task->tgid);
#else
	tgid = (u32)ctx->args[0];
#endif
	prev = killers.lookup(&tgid);
	if (prev) {
		prev->flags |= PROCMON_K_OOM;
		return 0;
	}
	k.sig = 9;
	k.flags = PROCMON_K_KNOWN | PROCMON_K_KERNEL | PROCMON_K_OOM;
	k.code = 0x80; /* SI_KERNEL */
	killers.update(&tgid, &k);
	return 0;
}
#endif /* PROCMON_CAPTURE_KILLER */

#endif /* PROCMON_OFFSETS_ONLY */
