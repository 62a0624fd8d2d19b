/* Exec flood: WORKERS processes each fork+execv+wait PROGRAM with NARGS arguments of ARGLEN
 * bytes ('x'), for SECONDS. NARGS 0 is a fork storm (the child _exits without exec). The first
 * argument is "<worker>.<child>" padded with 'x' to ARGLEN, so that no two command lines are
 * the same (as an attacker would make them, to defeat any cache keyed by the command line).
 * Usage: execflood SECONDS WORKERS NARGS ARGLEN [PROGRAM]. PROGRAM defaults to /bin/true.
 * Prints "<children> <seconds>" on stdout, like forkstorm. Meant to run as an unprivileged
 * user: it is what a hostile local user can do without any privilege. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static long flood(double seconds, long worker, long nargs, long arglen, char **argv,
		  const char *program)
{
	double end = now() + seconds;
	long children = 0;
	/* room for the number even when ARGLEN is 1 */
	char *first = nargs > 0 ? calloc(1, arglen + 32) : NULL;

	while (now() < end) {
		pid_t pid;
		int status;

		if (first) {
			/* "<worker>.<child>" then the argument's 'x's up to ARGLEN */
			int n = snprintf(first, 32, "%ld.%ld", worker, children);

			if (n < arglen) {
				memset(first + n, 'x', arglen - n);
				first[arglen] = '\0';
			}
			argv[1] = first;
		}
		pid = fork();
		if (pid < 0)
			continue; /* EAGAIN under a process limit: try again */
		if (pid == 0) {
			if (nargs > 0)
				execv(program, argv);
			_exit(0);
		}
		waitpid(pid, &status, 0);
		children++;
	}
	return children;
}

int main(int argc, char **argv)
{
	double seconds, start;
	long workers, nargs, arglen, total = 0, *counts;
	const char *program;
	char **child_argv, *arg;

	if (argc < 5) {
		fprintf(stderr, "usage: %s SECONDS WORKERS NARGS ARGLEN [PROGRAM]\n", argv[0]);
		return 2;
	}
	seconds = atof(argv[1]);
	workers = atol(argv[2]);
	nargs = atol(argv[3]);
	arglen = atol(argv[4]);
	program = argc > 5 ? argv[5] : "/bin/true";
	if (workers < 1 || nargs < 0 || arglen < 1) {
		fprintf(stderr, "%s: WORKERS >= 1, NARGS >= 0, ARGLEN >= 1\n", argv[0]);
		return 2;
	}
	arg = malloc(arglen + 1);
	child_argv = calloc(nargs + 2, sizeof(*child_argv));
	/* each worker writes its count here: shared, so the parent can add them up */
	counts = mmap(NULL, workers * sizeof(long), PROT_READ | PROT_WRITE,
		      MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (!arg || !child_argv || counts == MAP_FAILED) {
		perror("execflood");
		return 1;
	}
	memset(arg, 'x', arglen);
	arg[arglen] = '\0';
	child_argv[0] = (char *)program;
	for (long i = 1; i <= nargs; i++)
		child_argv[i] = arg;

	start = now();
	for (long w = 0; w < workers; w++) {
		if (fork() == 0) {
			counts[w] = flood(seconds, w, nargs, arglen, child_argv, program);
			_exit(0);
		}
	}
	while (wait(NULL) > 0)
		;
	for (long w = 0; w < workers; w++)
		total += counts[w];
	printf("%ld %.3f\n", total, now() - start);
	return 0;
}
