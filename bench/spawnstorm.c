/* Spawn storm: WORKERS processes each posix_spawn+wait a program, N children in all.
 * Usage: spawnstorm N [WORKERS] [RATE] [PROGRAM]. PROGRAM defaults to /bin/true; the harness
 * passes a copy of /bin/true under a unique name so that the children's comm identifies the run.
 * With RATE > 0, children are paced to RATE per second overall. Prints "<children> <seconds>"
 * on stdout, like forkstorm. */
#define _GNU_SOURCE
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void storm(long n, double rate, const char *program)
{
	char *argv[] = {(char *)program, NULL};
	double start = now();

	for (long i = 0; i < n; i++) {
		pid_t pid;
		int status, err;

		if (rate > 0) {
			double due = start + i / rate, t = now();

			if (due > t)
				usleep((useconds_t)((due - t) * 1e6));
		}
		err = posix_spawn(&pid, program, NULL, NULL, argv, environ);
		if (err != 0) {
			fprintf(stderr, "posix_spawn %s: %s\n", program, strerror(err));
			exit(1);
		}
		if (waitpid(pid, &status, 0) < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
			fprintf(stderr, "%s did not exit cleanly\n", program);
			exit(1);
		}
	}
}

int main(int argc, char **argv)
{
	long n = argc > 1 ? atol(argv[1]) : 10000;
	int workers = argc > 2 ? atoi(argv[2]) : 1;
	double rate = argc > 3 ? atof(argv[3]) : 0;
	const char *program = argc > 4 ? argv[4] : "/bin/true";
	double start = now();
	int failed = 0, status;

	if (n < 0 || workers < 1) {
		fprintf(stderr, "usage: spawnstorm N [WORKERS] [RATE] [PROGRAM]\n");
		return 2;
	}
	for (int w = 0; w < workers; w++) {
		long share = n / workers + (w < n % workers);
		pid_t pid = fork();

		if (pid == 0) {
			storm(share, rate / workers, program);
			_exit(0);
		}
		if (pid < 0) {
			perror("fork");
			return 1;
		}
	}
	while (wait(&status) > 0)
		failed |= !WIFEXITED(status) || WEXITSTATUS(status) != 0;
	if (failed)
		return 1;
	printf("%ld %.6f\n", n, now() - start);
	return 0;
}
