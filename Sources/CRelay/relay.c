#define _GNU_SOURCE
#include <pthread.h>
#include <sys/ioctl.h>
#include <linux/sockios.h>
#include <sys/socket.h>
#include "CRelay.h"

int harp_relay_name_thread(const char *name) {
    return pthread_setname_np(pthread_self(), name);
}

int harp_relay_send_room(int fd) {
    int queued = 0, size = 0;
    socklen_t length = sizeof(size);
    if (ioctl(fd, SIOCOUTQ, &queued) != 0 || getsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, &length) != 0) return -1;
    return size - queued;
}

int harp_relay_accept(int fd) {
    return accept4(fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
}
