// The system interfaces the relay (Sources/HarpProxy/Builtin/DataPath/Relay.swift) uses and Glibc's
// Swift module does not export.
#include <sys/epoll.h>
#include <sys/eventfd.h>

/// Names the calling thread (at most 15 bytes are kept), as `ps -L` and /proc show it.
int harp_relay_name_thread(const char *name);

/// Bytes written to a TCP or Unix stream socket that its peer has not taken yet (SIOCOUTQ); -1 on error.
int harp_relay_unsent(int fd);
