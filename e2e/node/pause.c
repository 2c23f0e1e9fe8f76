/* The pod sandbox's process for the node harness's pause image: sleeps
 * until SIGINT or SIGTERM (then exits 0) and reaps the children a shared
 * PID namespace hands it. Built static by build.sh. */
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

static void on_stop(int sig) { (void)sig; _exit(0); }
static void on_child(int sig) {
    (void)sig;
    while (waitpid(-1, NULL, WNOHANG) > 0) {
    }
}

int main(void) {
    signal(SIGINT, on_stop);
    signal(SIGTERM, on_stop);
    signal(SIGCHLD, on_child);
    for (;;) pause();
}
