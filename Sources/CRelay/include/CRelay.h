// The system interfaces the relay (Sources/HarpProxy/Builtin/DataPath/Relay.swift) uses and Glibc's
// Swift module does not export.
#include <sys/epoll.h>
#include <sys/eventfd.h>

/// Names the calling thread (at most 15 bytes are kept), as `ps -L` and /proc show it.
int harp_relay_name_thread(const char *name);

/// Room left in a stream socket's send buffer: its size (SO_SNDBUF) less the bytes its peer has
/// not acknowledged or taken yet (SIOCOUTQ); -1 on error.
int harp_relay_send_room(int fd);

/// Accepts a connection on a listening socket: the new socket non-blocking and close-on-exec
/// (accept4, which Glibc's Swift module does not export); -1 with errno as accept4 sets it.
int harp_relay_accept(int fd);
