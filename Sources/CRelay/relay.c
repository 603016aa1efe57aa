#define _GNU_SOURCE
#include <pthread.h>
#include <sys/ioctl.h>
#include <linux/sockios.h>
#include "CRelay.h"

int harp_relay_name_thread(const char *name) {
    return pthread_setname_np(pthread_self(), name);
}

int harp_relay_unsent(int fd) {
    int queued = 0;
    return ioctl(fd, SIOCOUTQ, &queued) == 0 ? queued : -1;
}
