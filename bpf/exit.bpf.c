// SPDX-License-Identifier: GPL-2.0
/* procmon CO-RE probe: one record per process exit (or per thread exit on request), plus
 * the context userspace joins to exits: a slim record per exec (executable and args, read
 * while the process still has them) and per cgroup v2 creation and removal (its path).
 * Exits by a signal carry who sent it, kept from signal_generate until the exit.
 * Filters run in the kernel, set before load as const volatile knobs, so that
 * unwanted exits never cost a ring-buffer record or a wakeup. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>
#include "exit_record.h"

#define SIGNAL_GROUP_EXIT 0x00000004
#define PM_SI_USER 0
#define PM_SI_QUEUE -1
#define PM_SI_TKILL -6
#define PM_SI_KERNEL 0x80
#define PM_SIGNAL_DELIVERED 0 /* the tracepoint's result: enum trace_signal_deliver */
#define PM_SIGNAL_LOSE_INFO 4

const volatile bool per_thread = false;   /* report every thread exit, not only group ends */
const volatile bool failed_only = false;  /* drop exits with status 0 and no signal */
const volatile __u32 target_pidns = 0;    /* pid-namespace inode to scope to; 0 = all */
const volatile __u64 wakeup_bytes = 32768;/* batch wakeups until this much is queued... */
const volatile __u64 wakeup_ns = 40000000;/* ...or until the oldest unannounced record is this old */
const volatile bool capture_args = true;  /* off: exec records carry the executable only */
/* `procmon tail --pid/--cgroup`, as exitsnoop's -p and -c: only exits of this process (its
 * tgid as the host sees it), and only of tasks in this cgroup v2 or below it (its id, the
 * directory's inode, at its depth: the root is level 0). 0 = all. The cgroup is compared as
 * an ancestor id, not through a cgroup-array map: a knob, so nothing to fill or pin. */
const volatile __u32 target_tgid = 0;
const volatile __u64 target_cgroup = 0;
const volatile __u32 target_cgroup_level = 0;
/* Context records (exec, cgroup) are admitted only while the ring holds less than this many
 * bytes; the rest of the ring is kept for exits, so that no flood of execs can cost an exit.
 * 0: no limit. */
const volatile __u64 context_fill_max = 0;

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

/* Context records are built here and sent trimmed (bpf_ringbuf_output): most command
 * lines are far shorter than PROCMON_ARGS_LEN, and the ring is shared with exits. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct exec_record);
} exec_scratch SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct cgroup_record);
} cgroup_scratch SEC(".maps");

/* The last fatal signal sent to each process (by tgid) until it exits: a fatal signal is
 * one whose action is the default and kills. LRU: a process that never exits (the signal was
 * blocked, then handled) is forgotten first. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, struct killer);
} killers SEC(".maps");

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

/* Wake a sleeping consumer once per batch: when this record brings the backlog up to
 * wakeup_bytes, or when the last wakeup is wakeup_ns old (a trickle is not held back). Not for
 * every record past the mark: a consumer that is behind is awake anyway (poll reports data
 * while any is queued), and a forced wakeup costs the exiting task several microseconds.
 * size counts the record's 8-byte header; a reserved record is already in AVAIL_DATA. */
static __always_inline __u64 wakeup_flag(__u64 now, __u64 size, bool reserved)
{
	__u64 queued = bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA);
	__u64 before = queued;

	if (reserved)
		before = queued > size ? queued - size : 0;
	if (!wakeup_bytes || (before < wakeup_bytes && before + size >= wakeup_bytes) ||
	    now - last_wakeup_ns >= wakeup_ns) {
		last_wakeup_ns = now;
		return BPF_RB_FORCE_WAKEUP;
	}
	return BPF_RB_NO_WAKEUP;
}

/* Whose exec the process's image comes from. self_exec_id counts a task's execs; fork
 * copies it and records the parent's in parent_exec_id. So a process that never exec'd has
 * both equal, and its parent has not exec'd since the fork when the parent's count still
 * matches. A reaper (pid 1 of a namespace, a subreaper) may have adopted the process: then
 * the chain is broken and the owner unknown. */
static __always_inline void image_owner(struct task_struct *leader, struct exit_record *rec)
{
	struct task_struct *t = leader, *parent;
	struct signal_struct *psig;
	__u64 parent_exec_id;
	__u32 pidns, nr;

	rec->image_pid = 0;
	rec->image_start_ns = 0;
	rec->image_exec_id = 0;
	for (int i = 0; i < PROCMON_IMAGE_DEPTH; i++) {
		parent_exec_id = BPF_CORE_READ(t, parent_exec_id);
		if (BPF_CORE_READ(t, self_exec_id) != parent_exec_id) {
			rec->image_pid = BPF_CORE_READ(t, tgid);
			rec->image_start_ns = BPF_CORE_READ(t, start_boottime);
			rec->image_exec_id = BPF_CORE_READ(t, self_exec_id);
			return;
		}
		parent = BPF_CORE_READ(t, real_parent);
		psig = BPF_CORE_READ(parent, signal);
		pid_ns_of(parent, &pidns, &nr);
		if (BPF_CORE_READ(parent, self_exec_id) != parent_exec_id || nr == 1 ||
		    BPF_CORE_READ_BITFIELD_PROBED(psig, is_child_subreaper))
			return;
		t = BPF_CORE_READ(parent, group_leader);
	}
}

/* The killer of a process that died of a signal: the last fatal signal recorded for it, if
 * that is the signal it died of. The entry is dropped either way: the process is gone. */
static __always_inline void fill_killer(struct exit_record *rec, __u32 tgid, __u32 status)
{
	struct killer *k = bpf_map_lookup_elem(&killers, &tgid);

	rec->killer_flags = 0;
	rec->killer_pid = 0;
	rec->killer_uid = 0;
	rec->killer_code = 0;
	__builtin_memset(rec->killer_comm, 0, sizeof(rec->killer_comm));
	if (!k)
		return;
	if ((status & 0x7f) && k->sig == (status & 0x7f)) {
		rec->killer_flags = k->flags;
		rec->killer_pid = k->pid;
		rec->killer_uid = k->uid;
		rec->killer_code = k->code;
		__builtin_memcpy(rec->killer_comm, k->comm, sizeof(rec->killer_comm));
	}
	bpf_map_delete_elem(&killers, &tgid);
}

static __always_inline void emit(struct task_struct *task, bool process, __u32 code,
				 __u32 pidns, __u32 ns_pid)
{
	struct task_struct *leader = task->group_leader;
	struct signal_struct *sig = task->signal;
	struct exit_record *rec;

	rec = bpf_ringbuf_reserve(&events, sizeof(*rec), 0);
	if (!rec) {
		count(PROCMON_CNT_DROPPED);
		return;
	}
	rec->kind = PROCMON_REC_EXIT;
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
	image_owner(leader, rec);
	bpf_get_current_comm(rec->comm, sizeof(rec->comm));
	BPF_CORE_READ_STR_INTO(&rec->parent_comm, task, real_parent, comm);

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
		fill_killer(rec, task->tgid, code);
	} else {
		rec->start_boot_ns = task->start_boottime;
		rec->utime_ns = task->utime;
		rec->stime_ns = task->stime;
		rec->runtime_ns = task->se.sum_exec_runtime;
		fill_killer(rec, 0, 0); /* tgid 0 is never a key: this only clears the fields */
	}

	count(PROCMON_CNT_EMITTED);
	bpf_ringbuf_submit(rec, wakeup_flag(rec->ts_boot_ns, sizeof(*rec) + 8, true));
}

/* The agent itself and, with a pid-namespace scope, other namespaces are not reported. */
static __always_inline bool out_of_scope(__u32 pidns, __u32 ns_pid)
{
	struct self_id *self;
	__u32 zero = 0;

	if (target_pidns && pidns != target_pidns)
		return true;
	self = bpf_map_lookup_elem(&self_id, &zero);
	return self && self->tgid && ns_pid == self->tgid && pidns == self->pidns;
}

/* Every thread exit passes here; per_thread adds a thread record to the process record
 * that the group's last thread produces. */
static __always_inline int handle_exit(bool group_dead)
{
	struct task_struct *task = bpf_get_current_task_btf();
	__u32 pidns, ns_pid, code;

	if (!per_thread && !group_dead)
		return 0;
	if (target_tgid && task->tgid != target_tgid)
		return 0;
	if (target_cgroup &&
	    bpf_get_current_ancestor_cgroup_id(target_cgroup_level) != target_cgroup)
		return 0;
	pid_ns_of(task->group_leader, &pidns, &ns_pid);
	if (out_of_scope(pidns, ns_pid))
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

/* Whether a context record of this many bytes may still enter the ring (context_fill_max).
 * Not admitted counts as a lost context record: its exit still comes, with less context. */
static __always_inline bool context_admitted(__u64 size)
{
	if (context_fill_max &&
	    bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) + size + 8 > context_fill_max) {
		count(PROCMON_CNT_CONTEXT_DROPPED);
		return false;
	}
	return true;
}

/* After exec the new image's argv sits in the process's memory and the task is current:
 * read both now, so that a process living a millisecond still has them at exit.
 * Returns how many bytes of rec to send (args trimmed to what was read). */
static __always_inline __u32 fill_exec(struct exec_record *rec, struct task_struct *p,
				       struct linux_binprm *bprm)
{
	__u32 size = 0;
	__u64 start, total;
	struct mm_struct *mm;

	rec->kind = PROCMON_REC_EXEC;
	rec->flags = 0;
	rec->ts_boot_ns = bpf_ktime_get_boot_ns();
	rec->start_boot_ns = BPF_CORE_READ(p, group_leader, start_boottime);
	rec->pid = p->tgid;
	rec->args_total = 0;
	rec->exec_id = BPF_CORE_READ(p, self_exec_id);
	rec->_pad = 0;
	bpf_probe_read_kernel_str(rec->filename, sizeof(rec->filename), BPF_CORE_READ(bprm, filename));
	if (capture_args) {
		mm = BPF_CORE_READ(p, mm);
		start = BPF_CORE_READ(mm, arg_start);
		total = BPF_CORE_READ(mm, arg_end) - start;
		size = total < PROCMON_ARGS_LEN ? total : PROCMON_ARGS_LEN;
		if (total > PROCMON_ARGS_LEN)
			rec->flags |= PROCMON_F_ARGS_TRUNCATED;
		if (size > PROCMON_ARGS_LEN) /* for the verifier: never true */
			size = PROCMON_ARGS_LEN;
		if (bpf_probe_read_user(rec->args, size, (void *)start))
			size = 0;
		rec->args_total = total;
	} else {
		rec->flags |= PROCMON_F_NO_ARGS;
	}
	rec->args_size = size;
	return offsetof(struct exec_record, args) + size;
}

SEC("tp_btf/sched_process_exec")
int BPF_PROG(exec_btf, struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
{
	struct exec_record *rec;
	__u32 zero = 0, pidns, ns_pid, size;

	pid_ns_of(p, &pidns, &ns_pid);
	if (out_of_scope(pidns, ns_pid))
		return 0;
	rec = bpf_map_lookup_elem(&exec_scratch, &zero);
	if (!rec)
		return 0;
	size = fill_exec(rec, p, bprm);
	if (size > sizeof(*rec) || !context_admitted(size)) /* > sizeof: never, for the verifier */
		return 0;
	if (bpf_ringbuf_output(&events, rec, size, wakeup_flag(rec->ts_boot_ns, size + 8, false)))
		count(PROCMON_CNT_CONTEXT_DROPPED);
	return 0;
}

/* The default (v2) hierarchy has id 0; v1 hierarchies number their kernfs ids apart. */
static __always_inline int emit_cgroup(struct cgroup *cgrp, const char *path, __u32 kind)
{
	struct cgroup_record *rec;
	struct cgroup_subsys_state *parent_css;
	struct cgroup *parent;
	__u32 zero = 0;
	long size = 0;

	if (BPF_CORE_READ(cgrp, root, hierarchy_id) != 0)
		return 0;
	rec = bpf_map_lookup_elem(&cgroup_scratch, &zero);
	if (!rec)
		return 0;
	rec->kind = kind;
	rec->id = BPF_CORE_READ(cgrp, kn, id);
	/* cgroup_parent(): the parent's css is its cgroup's "self" */
	parent_css = BPF_CORE_READ(cgrp, self.parent);
	parent = (void *)parent_css - bpf_core_field_offset(struct cgroup, self);
	rec->parent_id = parent_css ? BPF_CORE_READ(parent, kn, id) : 0;
	if (path) {
		size = bpf_probe_read_kernel_str(rec->path, sizeof(rec->path), path);
		if (size < 0)
			size = 0;
		if (size > PROCMON_CGROUP_PATH_LEN)
			size = PROCMON_CGROUP_PATH_LEN;
	}
	rec->path_size = size;
	if (!context_admitted(offsetof(struct cgroup_record, path) + size))
		return 0;
	if (bpf_ringbuf_output(&events, rec, offsetof(struct cgroup_record, path) + size,
			       wakeup_flag(bpf_ktime_get_boot_ns(), size + 8, false)))
		count(PROCMON_CNT_CONTEXT_DROPPED);
	return 0;
}

SEC("tp_btf/cgroup_mkdir")
int BPF_PROG(cgroup_mkdir_btf, struct cgroup *cgrp, const char *path)
{
	return emit_cgroup(cgrp, path, PROCMON_REC_CGROUP_MKDIR);
}

SEC("tp_btf/cgroup_rmdir")
int BPF_PROG(cgroup_rmdir_btf, struct cgroup *cgrp, const char *path)
{
	return emit_cgroup(cgrp, NULL, PROCMON_REC_CGROUP_RMDIR);
}

/* Whether sig ends the task when delivered: its action is the default, and the default
 * kills (not ignored: SIGCHLD, SIGCONT, SIGURG, SIGWINCH; not a stop: SIGSTOP..SIGTTOU). */
static __always_inline bool kills_by_default(struct task_struct *task, int sig)
{
	struct sighand_struct *sighand;
	void *handler = (void *)1; /* SIG_IGN, if the read fails */
	__u64 off;

	if (sig == 9)
		return true;
	if (sig < 1 || sig > 64 || sig == 17 || sig == 18 || sig == 23 || sig == 28 ||
	    (sig >= 19 && sig <= 22))
		return false;
	sighand = BPF_CORE_READ(task, sighand);
	off = bpf_core_field_offset(struct sighand_struct, action) +
	      (sig - 1) * bpf_core_type_size(struct k_sigaction) +
	      bpf_core_field_offset(struct k_sigaction, sa.sa_handler);
	bpf_probe_read_kernel(&handler, sizeof(handler), (void *)sighand + off);
	return handler == NULL; /* SIG_DFL */
}

/* signal_generate(sig, info, task, group, result), for every signal sent. Only fatal ones
 * that were delivered are kept, with their sender: the current task, unless the kernel sent
 * it (info SEND_SIG_NOINFO or SEND_SIG_PRIV, or an si_code other than the three a kill(2),
 * sigqueue(3) or tgkill(2) carries: a fault, SI_KERNEL, a timer). A raw tracepoint: the
 * arguments are plain values, and it attaches with CAP_BPF and CAP_PERFMON. */
SEC("raw_tp/signal_generate")
int signal_raw(struct bpf_raw_tracepoint_args *ctx)
{
	int sig = (int)ctx->args[0], result = (int)ctx->args[4];
	unsigned long info = ctx->args[1];
	struct task_struct *task = (struct task_struct *)ctx->args[2];
	struct killer k = {}, *prev;
	bool kernel = true;
	__u32 tgid;

	if (result != PM_SIGNAL_DELIVERED && result != PM_SIGNAL_LOSE_INFO)
		return 0;
	if (!kills_by_default(task, sig))
		return 0;
	if (info > 1) {
		bpf_probe_read_kernel(&k.code, sizeof(k.code),
				      (void *)info + bpf_core_field_offset(struct kernel_siginfo, si_code));
		kernel = k.code != PM_SI_USER && k.code != PM_SI_QUEUE && k.code != PM_SI_TKILL;
	} else {
		k.code = info ? PM_SI_KERNEL : PM_SI_USER;
	}
	k.sig = sig;
	k.flags = PROCMON_K_KNOWN;
	if (kernel) {
		k.flags |= PROCMON_K_KERNEL;
	} else {
		k.pid = bpf_get_current_pid_tgid() >> 32;
		k.uid = (__u32)bpf_get_current_uid_gid();
		bpf_get_current_comm(k.comm, sizeof(k.comm));
	}
	tgid = BPF_CORE_READ(task, tgid);
	prev = bpf_map_lookup_elem(&killers, &tgid);
	if (prev && (prev->flags & PROCMON_K_OOM)) /* the OOM kill came first: it stays the cause */
		return 0;
	bpf_map_update_elem(&killers, &tgid, &k, BPF_ANY);
	return 0;
}

/* mark_victim: the OOM killer chose this process, right after sending it SIGKILL from the
 * kernel. The arguments are (task, uid) on kernels whose event has a uid field, else (pid):
 * the thread's id, which is the process's unless its leader already exited. */
SEC("raw_tp/mark_victim")
int oom_raw(struct bpf_raw_tracepoint_args *ctx)
{
	struct killer k = {}, *prev;
	__u32 tgid;

	if (bpf_core_field_exists(struct trace_event_raw_mark_victim, uid))
		tgid = BPF_CORE_READ((struct task_struct *)ctx->args[0], tgid);
	else
		tgid = (__u32)ctx->args[0];
	prev = bpf_map_lookup_elem(&killers, &tgid);
	if (prev) {
		prev->flags |= PROCMON_K_OOM;
		return 0;
	}
	k.sig = 9;
	k.flags = PROCMON_K_KNOWN | PROCMON_K_KERNEL | PROCMON_K_OOM;
	k.code = PM_SI_KERNEL;
	bpf_map_update_elem(&killers, &tgid, &k, BPF_ANY);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
