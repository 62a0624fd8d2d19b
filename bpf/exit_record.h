/* SPDX-License-Identifier: GPL-2.0 */
/* The records every probe backend (CO-RE and bcc) writes to the ring buffer.
 * procmon.probe.record decodes exactly these layouts; bump RECORD_VERSION on any change.
 * Every record starts with its kind, so that one ring carries exits and the context
 * (execs, cgroup creations) that userspace joins to them. */
#ifndef PROCMON_EXIT_RECORD_H
#define PROCMON_EXIT_RECORD_H

#define PROCMON_RECORD_VERSION 4
#define PROCMON_COMM_LEN 16
#define PROCMON_FILENAME_LEN 256
#define PROCMON_ARGS_LEN 1024   /* a power of two: the probe masks with it */
#define PROCMON_CGROUP_PATH_LEN 512

/* kinds */
#define PROCMON_REC_EXIT 1
#define PROCMON_REC_EXEC 2
#define PROCMON_REC_CGROUP_MKDIR 3
#define PROCMON_REC_CGROUP_RMDIR 4

/* exit flags */
#define PROCMON_F_THREAD 0x1      /* a thread exit, not the end of the thread group */
#define PROCMON_F_GROUP_DEAD 0x2  /* this exit ended the thread group */
#define PROCMON_IMAGE_DEPTH 8     /* forks without exec followed up to the exec'ing ancestor */

/* killer flags: who sent the signal that ended the process (signal/signal_generate) */
#define PROCMON_K_KNOWN 0x1       /* a fatal signal was seen: the killer_* fields are set */
#define PROCMON_K_KERNEL 0x2      /* sent by the kernel: a fault, SI_KERNEL, a timer, a pipe */
#define PROCMON_K_OOM 0x4         /* the OOM killer chose this process (oom/mark_victim) */

/* exec flags */
#define PROCMON_F_ARGS_TRUNCATED 0x1
#define PROCMON_F_NO_ARGS 0x2     /* capture_args is off */

/* counter map slots */
#define PROCMON_CNT_DROPPED 0 /* ring buffer reservation failed */
#define PROCMON_CNT_EMITTED 1
#define PROCMON_CNT_CONTEXT_DROPPED 2 /* exec or cgroup record lost (ring full, or past the
					* context share of the ring): that context is unknown */
#define PROCMON_CNT_MAX 3

struct exit_record {
	__u32 kind;
	__u32 flags;
	__u64 ts_boot_ns;   /* bpf_ktime_get_boot_ns() at exit */
	__u64 start_boot_ns;/* start_boottime of the process (thread with per-thread) */
	__u64 utime_ns;     /* tick-sampled user time of the group (thread) */
	__u64 stime_ns;     /* tick-sampled system time */
	__u64 runtime_ns;   /* precise sum_exec_runtime; utime/stime are scaled to it */
	__u64 max_rss_pages;
	__u64 cgroup_id;
	__u32 pid;          /* tgid */
	__u32 tid;
	__u32 ppid;
	__u32 uid;
	__u32 gid;
	__u32 exit_code;    /* wait(2) status word: code << 8 | core 0x80 | signal */
	__u32 pidns_inode;
	__u32 ns_pid;       /* tgid as seen in its own pid namespace */
	char comm[PROCMON_COMM_LEN];
	char parent_comm[PROCMON_COMM_LEN];
	/* Whose exec the running image comes from: the process itself, or the ancestor it was
	 * forked from (through forks without exec). 0: unknown, e.g. a link of that chain was
	 * adopted by a reaper. Userspace looks the exec up by (image_pid, image_start_ns). */
	__u64 image_start_ns;
	__u32 image_pid;
	__u32 image_exec_id;/* the owner's self_exec_id: which of its execs the image is */
	/* The last fatal signal sent to the process, when it is the one it died of (process
	 * records only): the sender's tgid, uid and comm (0 and empty when the kernel sent it)
	 * and the signal's si_code. */
	__u32 killer_flags; /* PROCMON_K_* */
	__u32 killer_pid;
	__u32 killer_uid;
	__s32 killer_code;
	char killer_comm[PROCMON_COMM_LEN];
};

/* What the probe keeps per process between a fatal signal and the exit. */
struct killer {
	__u32 sig;
	__u32 flags;        /* PROCMON_K_* */
	__u32 pid;
	__u32 uid;
	__s32 code;
	char comm[PROCMON_COMM_LEN];
};

/* Sent at sched_process_exec, trimmed to the args actually captured. */
struct exec_record {
	__u32 kind;
	__u32 flags;
	__u64 ts_boot_ns;
	__u64 start_boot_ns;/* of the process, to tell a reused pid apart */
	__u32 pid;          /* tgid */
	__u32 args_size;    /* bytes of args[] that follow, NUL-separated */
	__u64 args_total;   /* arg_end - arg_start: > args_size when truncated */
	__u32 exec_id;      /* self_exec_id after this exec (low 32 bits): an exit whose
			     * image_exec_id differs belongs to a later exec whose record was lost */
	__u32 _pad;
	char filename[PROCMON_FILENAME_LEN];
	char args[PROCMON_ARGS_LEN];
};

/* cgroup v2 creations carry the path while it exists; removals let userspace keep it
 * only a grace period longer, for exits that are still in flight. */
struct cgroup_record {
	__u32 kind;
	__u32 path_size;    /* bytes of path[] that follow, with its NUL */
	__u64 id;           /* kernfs id: the inode of the cgroup directory */
	__u64 parent_id;    /* userspace names the cgroup under its parent as it sees it: the
			     * path is the host's, an agent in a cgroup namespace sees less */
	char path[PROCMON_CGROUP_PATH_LEN];
};

#endif
