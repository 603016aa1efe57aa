#include "CSockmap.h"
#include <errno.h>
#include <linux/bpf.h>
#include <linux/sockios.h>
#include <linux/tcp.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

static int sys_bpf(int command, union bpf_attr *attr) {
    return (int)syscall(SYS_bpf, command, attr, sizeof(*attr));
}

#define INSN(c, d, s, o, i) ((struct bpf_insn){.code = (c), .dst_reg = (d), .src_reg = (s), .off = (o), .imm = (i)})

uint64_t harp_socket_cookie(int fd) {
    uint64_t cookie = 0;
    socklen_t length = sizeof(cookie);
    if (getsockopt(fd, SOL_SOCKET, SO_COOKIE, &cookie, &length) != 0) return 0;
    return cookie;
}

static int map_put(int map, uint64_t key, int fd) {
    uint64_t value = (uint64_t)fd;
    union bpf_attr attr;
    memset(&attr, 0, sizeof(attr));
    attr.map_fd = (uint32_t)map;
    attr.key = (uint64_t)(uintptr_t)&key;
    attr.value = (uint64_t)(uintptr_t)&value;
    attr.flags = BPF_ANY;
    return sys_bpf(BPF_MAP_UPDATE_ELEM, &attr) == 0 ? 0 : -errno;
}

static int map_delete(int map, uint64_t key) {
    union bpf_attr attr;
    memset(&attr, 0, sizeof(attr));
    attr.map_fd = (uint32_t)map;
    attr.key = (uint64_t)(uintptr_t)&key;
    if (sys_bpf(BPF_MAP_DELETE_ELEM, &attr) == 0 || errno == ENOENT) return 0;
    return -errno;
}

static int make_hash(void) {
    union bpf_attr attr;
    memset(&attr, 0, sizeof(attr));
    attr.map_type = BPF_MAP_TYPE_SOCKHASH;
    attr.key_size = sizeof(uint64_t);
    attr.value_size = sizeof(uint64_t);
    attr.max_entries = 1 << 17;
    return sys_bpf(BPF_MAP_CREATE, &attr);
}

int harp_sockmap_open(struct harp_sockmap *map, char *error, int error_size) {
    map->targets = map->readers = map->program = -1;
    map->targets = make_hash();
    if (map->targets < 0) {
        int e = errno;
        snprintf(error, error_size, "cannot create a BPF sock hash: %s", strerror(e));
        return -e;
    }
    map->readers = make_hash();
    if (map->readers < 0) {
        int e = errno;
        snprintf(error, error_size, "cannot create a BPF sock hash: %s", strerror(e));
        harp_sockmap_close(map);
        return -e;
    }
    // r0 = bpf_sk_redirect_hash(skb, targets, &cookie(skb's socket), 0): send to the partner.
    // A socket whose partner has gone gets SK_DROP: it is being closed anyway.
    struct bpf_insn program[] = {
        INSN(BPF_ALU64 | BPF_MOV | BPF_X, BPF_REG_6, BPF_REG_1, 0, 0),
        INSN(BPF_JMP | BPF_CALL, 0, 0, 0, BPF_FUNC_get_socket_cookie),
        INSN(BPF_STX | BPF_MEM | BPF_DW, BPF_REG_10, BPF_REG_0, -8, 0),
        INSN(BPF_ALU64 | BPF_MOV | BPF_X, BPF_REG_1, BPF_REG_6, 0, 0),
        INSN(BPF_LD | BPF_DW | BPF_IMM, BPF_REG_2, BPF_PSEUDO_MAP_FD, 0, map->targets),
        INSN(0, 0, 0, 0, 0),
        INSN(BPF_ALU64 | BPF_MOV | BPF_X, BPF_REG_3, BPF_REG_10, 0, 0),
        INSN(BPF_ALU64 | BPF_ADD | BPF_K, BPF_REG_3, 0, 0, -8),
        INSN(BPF_ALU64 | BPF_MOV | BPF_K, BPF_REG_4, 0, 0, 0),
        INSN(BPF_JMP | BPF_CALL, 0, 0, 0, BPF_FUNC_sk_redirect_hash),
        INSN(BPF_JMP | BPF_EXIT, 0, 0, 0, 0),
    };
    char log[4096];
    log[0] = 0;
    union bpf_attr attr;
    memset(&attr, 0, sizeof(attr));
    attr.prog_type = BPF_PROG_TYPE_SK_SKB;
    attr.insns = (uint64_t)(uintptr_t)program;
    attr.insn_cnt = sizeof(program) / sizeof(program[0]);
    attr.license = (uint64_t)(uintptr_t)"GPL";
    attr.log_buf = (uint64_t)(uintptr_t)log;
    attr.log_size = sizeof(log);
    attr.log_level = 1;
    map->program = sys_bpf(BPF_PROG_LOAD, &attr);
    if (map->program < 0) {
        int e = errno;
        snprintf(error, error_size, "cannot load the sk_skb program: %s%s%s", strerror(e), log[0] ? "; verifier: " : "", log);
        harp_sockmap_close(map);
        return -e;
    }
    memset(&attr, 0, sizeof(attr));
    attr.target_fd = (uint32_t)map->readers;
    attr.attach_bpf_fd = (uint32_t)map->program;
    attr.attach_type = BPF_SK_SKB_VERDICT;
    if (sys_bpf(BPF_PROG_ATTACH, &attr) != 0) {
        int e = errno;
        snprintf(error, error_size, "cannot attach the sk_skb verdict program: %s", strerror(e));
        harp_sockmap_close(map);
        return -e;
    }
    return 0;
}

void harp_sockmap_close(struct harp_sockmap *map) {
    if (map->program >= 0) close(map->program);
    if (map->readers >= 0) close(map->readers);
    if (map->targets >= 0) close(map->targets);
    map->targets = map->readers = map->program = -1;
}

/// SO_RCVLOWAT makes TCP call the socket's data-ready hook, which is now the verdict program's:
/// bytes that arrived before the join are passed on in order, without waiting for more input.
static void kick(int fd) {
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_RCVLOWAT, &one, sizeof(one));
}

int harp_sockmap_join(const struct harp_sockmap *map, int a, int b, int *started) {
    *started = 0;
    uint64_t ca = harp_socket_cookie(a), cb = harp_socket_cookie(b);
    if (ca == 0 || cb == 0) return -EBADF;
    int result;
    if ((result = map_put(map->targets, ca, b)) != 0) goto fail;
    if ((result = map_put(map->targets, cb, a)) != 0) goto fail;
    // From here the kernel may take input from `a` into `b`'s queue, which leaving would drop.
    *started = 1;
    if ((result = map_put(map->readers, ca, a)) != 0) goto fail;
    if ((result = map_put(map->readers, cb, b)) != 0) goto fail;
    kick(a);
    kick(b);
    return 0;
fail:
    map_delete(map->readers, ca);
    map_delete(map->readers, cb);
    map_delete(map->targets, ca);
    map_delete(map->targets, cb);
    return result;
}

int harp_sockmap_stop_reading(const struct harp_sockmap *map, int fd) {
    uint64_t cookie = harp_socket_cookie(fd);
    if (cookie == 0) return -EBADF;
    return map_delete(map->readers, cookie);
}

int harp_sockmap_leave(const struct harp_sockmap *map, int fd) {
    uint64_t cookie = harp_socket_cookie(fd);
    if (cookie == 0) return -EBADF;
    int r1 = map_delete(map->readers, cookie);
    int r2 = map_delete(map->targets, cookie);
    return r1 != 0 ? r1 : r2;
}

int harp_socket_counts(int fd, int kernel_reads, uint64_t *received, uint64_t *written, uint64_t *queued_out) {
    // What waits in the receive queue, first: bytes that arrive before TCP_INFO is read then make
    // the count too high, never too low (the safe side: a flush waits a little longer). A socket
    // the kernel path still reads has an empty queue (its input is taken as it arrives), and is
    // not peeked: a peek would return, and so clear, a pending error (the EPIPE by which the
    // kernel tells of a FIN passed on). Not SIOCINQ: on a socket in a sockmap it reports the BPF
    // side's queue, not TCP's. A peek with MSG_TRUNC counts the bytes without copying them; this
    // holds while the program never passes input up to the socket's own BPF queue (it only
    // redirects), whose reader ignores MSG_TRUNC.
    // No buffer: should the peek meet the BPF queue after all (see harp_socket_parked), its copy
    // fails with EFAULT instead of writing anywhere.
    ssize_t unread = 0;
    if (!kernel_reads) {
        unread = recv(fd, NULL, 1 << 30, MSG_PEEK | MSG_TRUNC | MSG_DONTWAIT);
        if (unread < 0) unread = 0;  // nothing queued, or an error the socket's next user will see
    }
    struct tcp_info info;
    memset(&info, 0, sizeof(info));
    socklen_t length = sizeof(info);
    if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &info, &length) != 0) return -errno;
    int queued = 0;
    if (ioctl(fd, SIOCOUTQ, &queued) != 0) return -errno;
    uint64_t in = info.tcpi_bytes_received;
    // A received FIN takes one sequence number, which bytes_received counts.
    switch (info.tcpi_state) {
    case 6: /* TIME_WAIT */ case 7: /* CLOSE */ case 8: /* CLOSE_WAIT */ case 9: /* LAST_ACK */ case 11: /* CLOSING */
        if (in > 0) in -= 1;
        break;
    }
    *received = in > (uint64_t)unread ? in - (uint64_t)unread : 0;
    *written = info.tcpi_bytes_acked + (uint64_t)queued;
    *queued_out = (uint64_t)queued;
    return 0;
}

#include <sys/epoll.h>

int harp_watch_create(void) {
    int fd = epoll_create1(EPOLL_CLOEXEC);
    return fd >= 0 ? fd : -errno;
}

int harp_watch_add(int watch, int fd, uint64_t token) {
    struct epoll_event event;
    memset(&event, 0, sizeof(event));
    event.events = EPOLLRDHUP | EPOLLET;
    event.data.u64 = token;
    return epoll_ctl(watch, EPOLL_CTL_ADD, fd, &event) == 0 ? 0 : -errno;
}

int harp_watch_remove(int watch, int fd) {
    return epoll_ctl(watch, EPOLL_CTL_DEL, fd, NULL) == 0 ? 0 : -errno;
}

int harp_watch_wait(int watch, uint64_t *tokens, int *flags, int max, int timeout_ms) {
    struct epoll_event events[128];
    if (max > 128) max = 128;
    int n = epoll_wait(watch, events, max, timeout_ms);
    if (n < 0) return -errno;
    for (int i = 0; i < n; i++) {
        tokens[i] = events[i].data.u64;
        flags[i] = ((events[i].events & (EPOLLRDHUP | EPOLLHUP)) ? HARP_WATCH_EOF : 0) |
                   ((events[i].events & EPOLLERR) ? HARP_WATCH_ERROR : 0);
    }
    return n;
}

int harp_socket_error(int fd) {
    int error = 0;
    socklen_t length = sizeof(error);
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &length) != 0) return errno;
    return error;
}

int harp_socket_at_eof(int fd) {
    char byte;
    return recv(fd, &byte, 1, MSG_PEEK | MSG_DONTWAIT) == 0 ? 1 : 0;
}

int harp_socket_parked(int fd) {
    int queued = 0;
    if (ioctl(fd, SIOCINQ, &queued) != 0) return -errno;
    return queued;
}

long harp_socket_take(int fd, void *buffer, size_t length) {
    ssize_t n = recv(fd, buffer, length, MSG_DONTWAIT);
    return n >= 0 ? (long)n : -errno;
}
