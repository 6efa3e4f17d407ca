// What `with_creds` pays to lower and restore a thread's effective
// capabilities: two `capset` calls, timed over 200,000 pairs. A root tool
// under a root cordon that holds CAP_SYS_RESOURCE pays it on every brokered
// call (the tool gives that capability up with its rlimits).
//   cc -O2 -o /tmp/capset benches/capset.c && taskset -c 0 /tmp/capset
#include <linux/capability.h>
#include <stdio.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static long now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000000L + t.tv_nsec;
}

int main(void) {
    struct __user_cap_header_struct header = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct held[2], lowered[2];
    if (syscall(SYS_capget, &header, held) != 0) {
        perror("capget");
        return 1;
    }
    lowered[0] = held[0];
    lowered[1] = held[1];
    lowered[0].effective &= ~(1u << 1); // CAP_DAC_OVERRIDE, as a switch would
    const int n = 200000;
    long start = now_ns();
    for (int i = 0; i < n; i++) {
        if (syscall(SYS_capset, &header, lowered) != 0 || syscall(SYS_capset, &header, held) != 0) {
            perror("capset");
            return 1;
        }
    }
    printf("two capsets: %.0f ns\n", (double)(now_ns() - start) / n);
    return 0;
}
