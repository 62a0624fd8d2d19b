/* SPDX-License-Identifier: GPL-2.0 */
/* The record every probe backend (CO-RE and bcc) writes to the ring buffer.
 * procmon.probe.record decodes exactly this layout; bump RECORD_VERSION on any change. */
#ifndef PROCMON_EXIT_RECORD_H
#define PROCMON_EXIT_RECORD_H

#define PROCMON_RECORD_VERSION 1
#define PROCMON_COMM_LEN 16

/* flags */
#define PROCMON_F_THREAD 0x1     /* a thread exit, not the end of the thread group */
#define PROCMON_F_GROUP_DEAD 0x2 /* this exit ended the thread group */

/* counter map slots */
#define PROCMON_CNT_DROPPED 0 /* ring buffer reservation failed */
#define PROCMON_CNT_EMITTED 1
#define PROCMON_CNT_MAX 2

struct exit_record {
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
	__u32 flags;
	char comm[PROCMON_COMM_LEN];
	__u32 _pad;
};

#endif
