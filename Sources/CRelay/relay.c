#define _GNU_SOURCE
#include <pthread.h>
#include "CRelay.h"

int harp_relay_name_thread(const char *name) {
    return pthread_setname_np(pthread_self(), name);
}
