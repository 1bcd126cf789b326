/*
 * The pod sandbox's process, as Kubernetes' own pause image runs it: PID 1 of
 * the pod, holding its namespaces open. It sleeps until told to stop, exits 0
 * on SIGINT or SIGTERM, and reaps the orphans a PID 1 inherits. Built with
 * `gcc -static` by scripts/k8s-tools.sh: no registry is needed for it.
 */
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

static void stop(int sig) {
    (void)sig;
    _exit(0);
}

static void reap(int sig) {
    (void)sig;
    while (waitpid(-1, NULL, WNOHANG) > 0) {
    }
}

int main(void) {
    struct sigaction on_stop = {.sa_handler = stop};
    struct sigaction on_child = {.sa_handler = reap, .sa_flags = SA_NOCLDSTOP};
    sigaction(SIGINT, &on_stop, NULL);
    sigaction(SIGTERM, &on_stop, NULL);
    sigaction(SIGCHLD, &on_child, NULL);
    for (;;) {
        pause();
    }
    return EXIT_FAILURE;
}
