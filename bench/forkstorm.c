/* Fork storm: WORKERS processes each fork+_exit+wait a child, N children in all.
 * Usage: forkstorm N [WORKERS] [RATE]. With RATE > 0, children are paced to RATE per second
 * overall (a steady-rate generator). Prints "<children> <seconds>" on stdout. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void storm(long n, double rate)
{
	double start = now();

	for (long i = 0; i < n; i++) {
		if (rate > 0) {
			double due = start + i / rate, t = now();

			if (due > t)
				usleep((useconds_t)((due - t) * 1e6));
		}
		pid_t pid = fork();

		if (pid == 0)
			_exit(0);
		if (pid < 0) {
			perror("fork");
			exit(1);
		}
		waitpid(pid, NULL, 0);
	}
}

int main(int argc, char **argv)
{
	long n = argc > 1 ? atol(argv[1]) : 10000;
	int workers = argc > 2 ? atoi(argv[2]) : 1;
	double rate = argc > 3 ? atof(argv[3]) : 0;
	double start = now();

	for (int w = 0; w < workers; w++) {
		long share = n / workers + (w < n % workers);

		if (fork() == 0) {
			storm(share, rate / workers);
			_exit(0);
		}
	}
	while (wait(NULL) > 0)
		;
	printf("%ld %.6f\n", n, now() - start);
	return 0;
}
