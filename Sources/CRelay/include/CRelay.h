// The system interfaces the relay (Sources/HarpProxy/Builtin/Relay.swift) uses and Glibc's
// Swift module does not export.
#include <sys/epoll.h>
#include <sys/eventfd.h>
