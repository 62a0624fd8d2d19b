// SPDX-License-Identifier: GPL-2.0
/* The road not taken, built only to be measured (bench/join_cost.py): joining exec data to
 * exits in the kernel. The exec program keeps each process's exec record in a bounded LRU
 * map instead of sending it; the exit program does procmon's own exit work, then looks the
 * image owner up and sends its exec record with the exit, as an in-kernel join must. */
#include "../bpf/exit.bpf.c"

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 32768);
	__type(key, __u32);
	__type(value, struct exec_record);
} execs SEC(".maps");

SEC("tp_btf/sched_process_exec")
int BPF_PROG(join_exec, struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
{
	struct exec_record *rec;
	__u32 zero = 0, tgid = p->tgid;

	rec = bpf_map_lookup_elem(&exec_scratch, &zero);
	if (!rec)
		return 0;
	fill_exec(rec, p, bprm);
	bpf_map_update_elem(&execs, &tgid, rec, BPF_ANY);
	return 0;
}

SEC("tp_btf/sched_process_exit")
int BPF_PROG(join_exit, struct task_struct *p, bool group_dead_arg)
{
	struct exit_record owner;
	struct exec_record *exec;
	__u32 tgid = p->tgid;

	if (!group_dead_arg)
		return 0;
	handle_exit(true);
	image_owner(p->group_leader, &owner);
	exec = bpf_map_lookup_elem(&execs, &owner.image_pid);
	if (exec && bpf_ringbuf_output(&events, exec, sizeof(*exec),
				       wakeup_flag(exec->ts_boot_ns, sizeof(*exec) + 8, false)))
		count(PROCMON_CNT_CONTEXT_DROPPED);
	bpf_map_delete_elem(&execs, &tgid);
	return 0;
}
