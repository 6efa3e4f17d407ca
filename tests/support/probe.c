// Test probe for the shim's end-to-end tests: races and raw syscalls that
// Python cannot express. Compiled by the tests with `cc -O2 -pthread`.
//
//   probe open-race ALLOWED DENIED SECONDS
//   probe connect-race IP_OK PORT_OK IP_DENIED PORT_DENIED SECONDS
//   probe exec-race ALLOWED DENIED SECONDS
//   probe open-loop PATH N   (per-call latency of openat+close: median/p99/total ns;
//                             with PROBE_TRACE=FILE, every call's start and latency)
//   probe connect-loop IP PORT N   (socket+connect+close to a TCP listener)
//   probe exec-loop PROG N   (fork+execve+wait)
//   probe exec-fallback FAILING OK N   (a child execs FAILING, which fails, then OK; N times)
//   probe sendmmsg IP PORT_OK PORT_DENIED   (3 datagrams: ok, ok, denied)
//   probe sendmmsg-readonly IP PORT   (2 datagrams; the second mmsghdr is read-only)
//   probe thread-own-fds IP PORT   (a thread without CLONE_FILES sends from its own socket)
//   probe int80          (i386 getpid through int 0x80)
//   probe io-uring       (io_uring_setup)
//   probe clone3         (clone3: ENOSYS so libc falls back)
//   probe exec-cwd-race ALLOWED_DIR DENIED_DIR NAME SECONDS   (a thread moves the cwd under an exec)
//   probe clone-fs       (a child sharing the cwd)
//   probe link-race ALLOWED DENIED SECONDS    (links the flipped path as "linked")
//   probe rename-race ALLOWED DENIED SECONDS  (renames it to "moved", and back)
//   probe rename-type-race TARGET SECONDS  (renames file "f" to TARGET while a
//                        thread exchanges "f" with directory "d"; a violation:
//                        a directory moved to TARGET)
//
// Races print "ok=N denied=N violations=N" and exit 0; a violation means a
// denied object was reached.
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static volatile int stop;
static char path_buf[4096];
static char path_a[4096], path_b[4096];
static struct sockaddr_in addr_buf, addr_a, addr_b;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void *flip_path(void *arg) {
    (void)arg;
    while (!stop) {
        memcpy(path_buf, path_a, sizeof path_buf);
        __asm__ volatile("" ::: "memory"); // keep both stores: this is the race
        memcpy(path_buf, path_b, sizeof path_buf);
        __asm__ volatile("" ::: "memory");
    }
    return NULL;
}

static void *flip_addr(void *arg) {
    (void)arg;
    while (!stop) {
        memcpy(&addr_buf, &addr_a, sizeof addr_buf);
        __asm__ volatile("" ::: "memory");
        memcpy(&addr_buf, &addr_b, sizeof addr_buf);
        __asm__ volatile("" ::: "memory");
    }
    return NULL;
}

static int open_race(const char *allowed, const char *denied, double secs) {
    struct stat bad;
    if (stat(denied, &bad) != 0) { perror("stat denied"); return 2; }
    strncpy(path_a, allowed, sizeof path_a - 1);
    strncpy(path_b, denied, sizeof path_b - 1);
    memcpy(path_buf, path_a, sizeof path_buf);
    pthread_t t;
    pthread_create(&t, NULL, flip_path, NULL);
    long ok = 0, denied_n = 0, violations = 0;
    double end = now() + secs;
    while (now() < end) {
        int fd = open(path_buf, O_RDONLY | O_CLOEXEC);
        if (fd < 0) { denied_n++; continue; }
        struct stat st;
        fstat(fd, &st);
        if (st.st_ino == bad.st_ino && st.st_dev == bad.st_dev) violations++; else ok++;
        close(fd);
    }
    stop = 1;
    pthread_join(t, NULL);
    printf("ok=%ld denied=%ld violations=%ld\n", ok, denied_n, violations);
    return 0;
}

/* Gives the path another thread flips between ALLOWED and DENIED a new
   name (a link, or a rename and back): the denied file must never get one. */
static int name_race(const char *allowed, const char *denied, double secs, int rename_it) {
    struct stat bad, good;
    if (stat(denied, &bad) != 0 || stat(allowed, &good) != 0) { perror("stat"); return 2; }
    strncpy(path_a, allowed, sizeof path_a - 1);
    strncpy(path_b, denied, sizeof path_b - 1);
    memcpy(path_buf, path_a, sizeof path_buf);
    const char *to = rename_it ? "moved" : "linked";
    unlink(to);
    pthread_t t;
    pthread_create(&t, NULL, flip_path, NULL);
    long ok = 0, denied_n = 0, violations = 0;
    double end = now() + secs;
    while (now() < end) {
        int rc = rename_it ? rename(path_buf, to) : link(path_buf, to);
        if (rc != 0) { denied_n++; continue; }
        struct stat st;
        if (lstat(to, &st) != 0) { perror("lstat"); return 2; }
        int was_bad = st.st_ino == bad.st_ino && st.st_dev == bad.st_dev;
        if (was_bad) violations++; else ok++;
        if (rename_it) {
            if (rename(to, was_bad ? denied : allowed) != 0) { perror("rename back"); return 2; }
        } else if (unlink(to) != 0) { perror("unlink"); return 2; }
    }
    stop = 1;
    pthread_join(t, NULL);
    printf("ok=%ld denied=%ld violations=%ld\n", ok, denied_n, violations);
    return 0;
}

static void *exchange_f_d(void *arg) {
    (void)arg;
    while (!stop) syscall(SYS_renameat2, AT_FDCWD, "f", AT_FDCWD, "d", 2 /* RENAME_EXCHANGE */);
    return NULL;
}

static int rename_type_race(const char *target, double secs) {
    pthread_t t;
    pthread_create(&t, NULL, exchange_f_d, NULL);
    long ok = 0, denied_n = 0, violations = 0;
    double end = now() + secs;
    while (now() < end) {
        if (rename("f", target) != 0) { denied_n++; continue; }
        struct stat st;
        if (lstat(target, &st) != 0) { perror("lstat"); return 2; }
        if (S_ISDIR(st.st_mode)) violations++; else ok++;
        if (rename(target, "f") != 0) { perror("rename back"); return 2; }
    }
    stop = 1;
    pthread_join(t, NULL);
    printf("ok=%ld denied=%ld violations=%ld\n", ok, denied_n, violations);
    return 0;
}

static int connect_race(const char *ip_ok, int port_ok, const char *ip_bad, int port_bad, double secs) {
    addr_a.sin_family = AF_INET; addr_a.sin_port = htons(port_ok);
    inet_pton(AF_INET, ip_ok, &addr_a.sin_addr);
    addr_b.sin_family = AF_INET; addr_b.sin_port = htons(port_bad);
    inet_pton(AF_INET, ip_bad, &addr_b.sin_addr);
    addr_buf = addr_a;
    pthread_t t;
    pthread_create(&t, NULL, flip_addr, NULL);
    long ok = 0, denied_n = 0, violations = 0;
    double end = now() + secs;
    while (now() < end) {
        int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        struct linger l = {1, 0};
        setsockopt(s, SOL_SOCKET, SO_LINGER, &l, sizeof l);
        if (connect(s, (struct sockaddr *)&addr_buf, sizeof addr_buf) == 0) {
            struct sockaddr_in peer; socklen_t len = sizeof peer;
            getpeername(s, (struct sockaddr *)&peer, &len);
            if (peer.sin_addr.s_addr == addr_b.sin_addr.s_addr && peer.sin_port == addr_b.sin_port) violations++;
            else ok++;
        } else {
            denied_n++;
        }
        close(s);
    }
    stop = 1;
    pthread_join(t, NULL);
    printf("ok=%ld denied=%ld violations=%ld\n", ok, denied_n, violations);
    return 0;
}

/* Forks `child` (which execs and does not return) again and again for
 * `secs`, and counts how each ended: exit 0 (the allowed program ran), killed
 * (at the exec event: not what was decided), or anything else (denied). */
static int count_exec_outcomes(void (*child)(void), double secs) {
    long ok = 0, denied_n = 0, killed = 0;
    double end = now() + secs;
    while (now() < end) {
        pid_t pid = fork();
        if (pid == 0) child();
        int status;
        waitpid(pid, &status, 0);
        if (WIFEXITED(status) && WEXITSTATUS(status) == 0) ok++;
        else if (WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) killed++;
        else denied_n++;
    }
    printf("ok=%ld denied=%ld killed=%ld violations=0\n", ok, denied_n, killed);
    return 0;
}

/* Execs the path another thread flips between path_a and path_b. */
static void exec_flipped_path(void) {
    memcpy(path_buf, path_a, sizeof path_buf);
    pthread_t t;
    pthread_create(&t, NULL, flip_path, NULL);
    char *argv[] = {"probe-child", NULL};
    char *envp[] = {NULL};
    execve(path_buf, argv, envp);
    _exit(errno == EACCES ? 13 : 127);
}

static int exec_race(const char *allowed, const char *denied, double secs) {
    strncpy(path_a, allowed, sizeof path_a - 1);
    strncpy(path_b, denied, sizeof path_b - 1);
    return count_exec_outcomes(exec_flipped_path, secs);
}

static int dir_a, dir_b;
static const char *dir_a_path, *dir_b_path, *cwd_name;

static void *flip_cwd(void *arg) {
    (void)arg;
    for (;;) {
        fchdir(dir_b);
        fchdir(dir_a);
    }
    return NULL;
}

/* Execs the relative cwd_name while another thread moves the cwd between
 * dir_a_path and dir_b_path. */
static void exec_in_flipped_cwd(void) {
    dir_a = open(dir_a_path, O_RDONLY | O_DIRECTORY);
    dir_b = open(dir_b_path, O_RDONLY | O_DIRECTORY);
    if (dir_a < 0 || dir_b < 0 || fchdir(dir_a) != 0) _exit(2);
    pthread_t t;
    pthread_create(&t, NULL, flip_cwd, NULL);
    char *argv[] = {(char *)cwd_name, NULL};
    char *envp[] = {NULL};
    execve(cwd_name, argv, envp);
    _exit(errno == EACCES ? 13 : 127);
}

/* The script run must be the one decided, whatever the cwd became. */
static int exec_cwd_race(const char *allowed_dir, const char *denied_dir, const char *name,
                         double secs) {
    dir_a_path = allowed_dir;
    dir_b_path = denied_dir;
    cwd_name = name;
    return count_exec_outcomes(exec_in_flipped_cwd, secs);
}

static int cmp_long(const void *a, const void *b) {
    long x = *(const long *)a, y = *(const long *)b;
    return (x > y) - (x < y);
}

/* median, p99 and total of per-call times. */
static int report_loop(long *ns, long n) {
    long total = 0;
    for (long i = 0; i < n; i++) total += ns[i];
    qsort(ns, n, sizeof *ns, cmp_long);
    printf("median_ns=%ld p99_ns=%ld total_ns=%ld\n", ns[n / 2], ns[n * 99 / 100], total);
    return 0;
}

static int open_loop(const char *path, long n) {
    long *ns = calloc(n, sizeof *ns);
    long *at = calloc(n, sizeof *at);
    struct timespec start;
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (long i = 0; i < n; i++) {
        struct timespec a, b;
        clock_gettime(CLOCK_MONOTONIC, &a);
        int fd = openat(AT_FDCWD, path, O_RDONLY | O_CLOEXEC);
        if (fd < 0) { perror("open"); return 1; }
        close(fd);
        clock_gettime(CLOCK_MONOTONIC, &b);
        ns[i] = (b.tv_sec - a.tv_sec) * 1000000000L + (b.tv_nsec - a.tv_nsec);
        at[i] = (a.tv_sec - start.tv_sec) * 1000000000L + (a.tv_nsec - start.tv_nsec);
    }
    /* PROBE_TRACE=FILE: every call as "START_NS LATENCY_NS", for where the
       tail falls in time (benches/open_tail.py). */
    const char *trace = getenv("PROBE_TRACE");
    if (trace) {
        FILE *f = fopen(trace, "w");
        if (!f) { perror("PROBE_TRACE"); return 1; }
        for (long i = 0; i < n; i++) fprintf(f, "%ld %ld\n", at[i], ns[i]);
        fclose(f);
    }
    return report_loop(ns, n);
}

/* socket + connect + close to a TCP listener, n times. */
static int connect_loop(const char *ip, int port, long n) {
    long *ns = calloc(n, sizeof *ns);
    struct sockaddr_in to;
    memset(&to, 0, sizeof to);
    to.sin_family = AF_INET;
    to.sin_port = htons(port);
    inet_pton(AF_INET, ip, &to.sin_addr);
    for (long i = 0; i < n; i++) {
        struct timespec a, b;
        clock_gettime(CLOCK_MONOTONIC, &a);
        int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (s < 0 || connect(s, (struct sockaddr *)&to, sizeof to) != 0) { perror("connect"); return 1; }
        close(s);
        clock_gettime(CLOCK_MONOTONIC, &b);
        ns[i] = (b.tv_sec - a.tv_sec) * 1000000000L + (b.tv_nsec - a.tv_nsec);
    }
    return report_loop(ns, n);
}

/* fork + execve(prog) + wait, n times. */
static int exec_loop(const char *prog, long n) {
    long *ns = calloc(n, sizeof *ns);
    for (long i = 0; i < n; i++) {
        struct timespec a, b;
        clock_gettime(CLOCK_MONOTONIC, &a);
        pid_t pid = fork();
        if (pid == 0) {
            char *argv[] = {(char *)prog, NULL};
            execv(prog, argv);
            _exit(127);
        }
        int status;
        waitpid(pid, &status, 0);
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) { fprintf(stderr, "exec failed\n"); return 1; }
        clock_gettime(CLOCK_MONOTONIC, &b);
        ns[i] = (b.tv_sec - a.tv_sec) * 1000000000L + (b.tv_nsec - a.tv_nsec);
    }
    return report_loop(ns, n);
}

/* n times: a child execs `failing` (which must fail), then at once `ok`,
 * as execvp falls back to /bin/sh after ENOEXEC. */
static int exec_fallback(const char *failing, const char *ok, long n) {
    for (long i = 0; i < n; i++) {
        pid_t pid = fork();
        if (pid == 0) {
            char *first[] = {(char *)failing, NULL};
            execv(failing, first);
            int first_errno = errno;
            char *second[] = {(char *)ok, NULL};
            execv(ok, second);
            fprintf(stderr, "exec %s failed (%s) after %s (%s)\n", ok, strerror(errno), failing,
                    strerror(first_errno));
            _exit(127);
        }
        int status;
        waitpid(pid, &status, 0);
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
            fprintf(stderr, "round %ld: status %#x\n", i, status);
            return 1;
        }
    }
    printf("exec-fallback %ld rounds\n", n);
    return 0;
}

static int send_mmsg(const char *ip, int port_ok, int port_bad) {
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in to[3];
    struct iovec iov[3];
    struct mmsghdr msgs[3];
    char *payload[3] = {"one", "two", "three"};
    memset(msgs, 0, sizeof msgs);
    for (int i = 0; i < 3; i++) {
        memset(&to[i], 0, sizeof to[i]);
        to[i].sin_family = AF_INET;
        to[i].sin_port = htons(i < 2 ? port_ok : port_bad);
        inet_pton(AF_INET, ip, &to[i].sin_addr);
        iov[i].iov_base = payload[i];
        iov[i].iov_len = strlen(payload[i]);
        msgs[i].msg_hdr.msg_name = &to[i];
        msgs[i].msg_hdr.msg_namelen = sizeof to[i];
        msgs[i].msg_hdr.msg_iov = &iov[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
        msgs[i].msg_len = 999;
    }
    int r = sendmmsg(s, msgs, 3, 0);
    printf("sendmmsg=%d lens=%u,%u,%u\n", r, msgs[0].msg_len, msgs[1].msg_len, msgs[2].msg_len);
    return 0;
}

/* Two datagrams whose second mmsghdr sits on a read-only page: both are
 * sent, and the kernel, unable to write the second msg_len, reports 1. */
static int send_mmsg_readonly(const char *ip, int port) {
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    long page = sysconf(_SC_PAGESIZE);
    char *mem = mmap(NULL, 2 * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) return 1;
    struct mmsghdr *msgs = (struct mmsghdr *)(mem + page - sizeof(struct mmsghdr));
    struct sockaddr_in to;
    memset(&to, 0, sizeof to);
    to.sin_family = AF_INET;
    to.sin_port = htons(port);
    inet_pton(AF_INET, ip, &to.sin_addr);
    struct iovec iov[2] = {{"one", 3}, {"two", 3}};
    memset(msgs, 0, 2 * sizeof *msgs);
    for (int i = 0; i < 2; i++) {
        msgs[i].msg_hdr.msg_name = &to;
        msgs[i].msg_hdr.msg_namelen = sizeof to;
        msgs[i].msg_hdr.msg_iov = &iov[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
        msgs[i].msg_len = 999;
    }
    if (mprotect(mem + page, page, PROT_READ)) return 1;
    int r = sendmmsg(s, msgs, 2, 0);
    printf("sendmmsg=%d errno=%d len0=%u\n", r, r < 0 ? errno : 0, msgs[0].msg_len);
    return 0;
}

/* A thread made without CLONE_FILES (its own fd table) opens a UDP socket,
 * whose number the process's main table does not have, and sends from it.
 * Raw syscalls only: the thread shares the main thread's TLS (errno). */
static long own_fds_result;
static int own_fds_done;
static struct sockaddr_in own_fds_to;

static int own_fds_thread(void *arg) {
    (void)arg;
    /* Past any fd the main table holds. */
    long s = syscall(SYS_socket, AF_INET, SOCK_DGRAM, 0);
    long fd = s < 0 ? s : syscall(SYS_dup2, s, 200);
    long r = fd < 0 ? -1 : syscall(SYS_sendto, 200, "own", 3, 0, &own_fds_to, sizeof own_fds_to);
    own_fds_result = r < 0 ? -errno : r;
    __atomic_store_n(&own_fds_done, 1, __ATOMIC_RELEASE);
    syscall(SYS_exit, 0);
    return 0;
}

static int thread_own_fds(const char *ip, int port) {
    memset(&own_fds_to, 0, sizeof own_fds_to);
    own_fds_to.sin_family = AF_INET;
    own_fds_to.sin_port = htons(port);
    inet_pton(AF_INET, ip, &own_fds_to.sin_addr);
    size_t size = 256 * 1024;
    char *stack = malloc(size);
    int flags = CLONE_VM | CLONE_FS | CLONE_SIGHAND | CLONE_THREAD | CLONE_SYSVSEM;
    if (clone(own_fds_thread, stack + size, flags, NULL) < 0) { perror("clone"); return 1; }
    for (int waited = 0; !__atomic_load_n(&own_fds_done, __ATOMIC_ACQUIRE); waited++) {
        if (waited > 20000) { fprintf(stderr, "the thread did not finish\n"); return 1; }
        usleep(1000);
    }
    printf("thread-send=%ld\n", own_fds_result);
    return 0;
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IONBF, 0);
    if (argc < 2) return 2;
    const char *mode = argv[1];
    if (!strcmp(mode, "open-race") && argc == 5) return open_race(argv[2], argv[3], atof(argv[4]));
    if (!strcmp(mode, "link-race") && argc == 5) return name_race(argv[2], argv[3], atof(argv[4]), 0);
    if (!strcmp(mode, "rename-race") && argc == 5) return name_race(argv[2], argv[3], atof(argv[4]), 1);
    if (!strcmp(mode, "rename-type-race") && argc == 4) return rename_type_race(argv[2], atof(argv[3]));
    if (!strcmp(mode, "connect-race") && argc == 7)
        return connect_race(argv[2], atoi(argv[3]), argv[4], atoi(argv[5]), atof(argv[6]));
    if (!strcmp(mode, "exec-race") && argc == 5) return exec_race(argv[2], argv[3], atof(argv[4]));
    if (!strcmp(mode, "sendmmsg-readonly") && argc == 4) return send_mmsg_readonly(argv[2], atoi(argv[3]));
    if (!strcmp(mode, "sendmmsg") && argc == 5) return send_mmsg(argv[2], atoi(argv[3]), atoi(argv[4]));
    if (!strcmp(mode, "open-loop") && argc == 4) return open_loop(argv[2], atol(argv[3]));
    if (!strcmp(mode, "connect-loop") && argc == 5) return connect_loop(argv[2], atoi(argv[3]), atol(argv[4]));
    if (!strcmp(mode, "exec-loop") && argc == 4) return exec_loop(argv[2], atol(argv[3]));
    if (!strcmp(mode, "exec-fallback") && argc == 5) return exec_fallback(argv[2], argv[3], atol(argv[4]));
    if (!strcmp(mode, "thread-own-fds") && argc == 4) return thread_own_fds(argv[2], atoi(argv[3]));
    if (!strcmp(mode, "int80")) {
        long r;
        __asm__ volatile("int $0x80" : "=a"(r) : "a"(20L) : "memory");
        printf("int80 returned %ld\n", r);
        return 0;
    }
    if (!strcmp(mode, "io-uring")) {
        char params[120] = {0};
        long r = syscall(425, 8, params);
        printf("io_uring_setup=%ld errno=%d\n", r, r < 0 ? errno : 0);
        return r < 0 ? 0 : 1;
    }
    if (!strcmp(mode, "exec-cwd-race") && argc == 6)
        return exec_cwd_race(argv[2], argv[3], argv[4], atof(argv[5]));
    if (!strcmp(mode, "clone-fs")) {
        /* A child sharing the cwd, not a thread: refused. */
        long r = syscall(SYS_clone, CLONE_FS | SIGCHLD, 0, 0, 0, 0);
        if (r == 0) _exit(0);
        if (r > 0) waitpid(r, NULL, 0);
        printf("clone-fs=%ld errno=%d\n", r < 0 ? -1L : 0L, r < 0 ? errno : 0);
        return 0;
    }
    if (!strcmp(mode, "clone3")) {
        long r = syscall(435, NULL, 0);
        printf("clone3=%ld errno=%d\n", r, r < 0 ? errno : 0);
        return 0;
    }
    fprintf(stderr, "unknown mode\n");
    return 2;
}
