#include "CSockmap.h"
#include <arpa/inet.h>
#include <errno.h>
#include <linux/bpf.h>
#include <linux/sockios.h>
#include <linux/tcp.h>
#include <netinet/in.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/mman.h>
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

static int map_update(int map, uint64_t key, const void *value) {
    union bpf_attr attr;
    memset(&attr, 0, sizeof(attr));
    attr.map_fd = (uint32_t)map;
    attr.key = (uint64_t)(uintptr_t)&key;
    attr.value = (uint64_t)(uintptr_t)value;
    attr.flags = BPF_ANY;
    return sys_bpf(BPF_MAP_UPDATE_ELEM, &attr) == 0 ? 0 : -errno;
}

static int map_put(int map, uint64_t key, int fd) {
    uint64_t value = (uint64_t)fd;
    return map_update(map, key, &value);
}

static int map_delete(int map, uint64_t key) {
    union bpf_attr attr;
    memset(&attr, 0, sizeof(attr));
    attr.map_fd = (uint32_t)map;
    attr.key = (uint64_t)(uintptr_t)&key;
    if (sys_bpf(BPF_MAP_DELETE_ELEM, &attr) == 0 || errno == ENOENT) return 0;
    return -errno;
}

static int make_map(int type, uint32_t key_size, uint32_t value_size, uint32_t flags) {
    union bpf_attr attr;
    memset(&attr, 0, sizeof(attr));
    attr.map_type = (uint32_t)type;
    attr.key_size = key_size;
    attr.value_size = value_size;
    attr.max_entries = HARP_SEEN_SLOTS;
    attr.map_flags = flags;
    return sys_bpf(BPF_MAP_CREATE, &attr);
}

/// Moving a pair to user space counts on SIOCINQ reporting what a parked socket holds, which
/// Linux does only since 6.4 ("bpf, sockmap: Incorrectly handling copied_seq"; before, the
/// input counts as read, and a move would wait for it forever). So one loopback connection is
/// parked and sent 100 bytes at open: SIOCINQ must say 100, and a read must return them.
static int check_parking(const struct harp_sockmap *map, char *error, int error_size) {
    int listener = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), client = -1, server = -1, parked = -1, result = -EIO;
    uint64_t cookie = 0;
    struct sockaddr_in address;
    memset(&address, 0, sizeof(address));
    address.sin_family = AF_INET;
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t length = sizeof(address);
    if (listener < 0 || bind(listener, (struct sockaddr *)&address, sizeof(address)) != 0 || listen(listener, 1) != 0 ||
        getsockname(listener, (struct sockaddr *)&address, &length) != 0) goto done;
    client = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (client < 0 || connect(client, (struct sockaddr *)&address, sizeof(address)) != 0) goto done;
    server = accept(listener, NULL, NULL);
    if (server < 0 || (cookie = harp_socket_cookie(server)) == 0) goto done;
    if (map_put(map->readers, cookie, server) != 0) goto done;  // read by the program, no partner: parked
    char probe[100];
    memset(probe, 'p', sizeof(probe));
    if (send(client, probe, sizeof(probe), 0) != (ssize_t)sizeof(probe)) goto done;
    for (int i = 0; i < 100; i++) {  // up to 1 s for the input to arrive
        if (ioctl(server, SIOCINQ, &parked) != 0 || parked >= (int)sizeof(probe)) break;
        usleep(10000);
    }
    ssize_t read = recv(server, probe, sizeof(probe), MSG_DONTWAIT);
    result = parked == (int)sizeof(probe) && read == (ssize_t)sizeof(probe) ? 0 : -ENOTSUP;
done:
    if (cookie != 0) map_delete(map->readers, cookie);
    if (result == -EIO) {
        int e = errno;
        snprintf(error, error_size, "cannot check the kernel's sockmap on a loopback connection: %s", strerror(e));
        result = -e;
    } else if (result != 0) {
        snprintf(error, error_size, "this kernel does not report the input a parked sockmap socket holds (SIOCINQ gave %d bytes of 100; Linux 6.4 or later is needed)", parked);
    }
    if (server >= 0) close(server);
    if (client >= 0) close(client);
    if (listener >= 0) close(listener);
    return result;
}

int harp_sockmap_open(struct harp_sockmap *map, char *error, int error_size) {
    map->targets = map->readers = map->slots = map->seen = map->program = -1;
    map->seen_memory = NULL;
    struct { int *fd; int type; uint32_t key, value, flags; const char *what; } maps[] = {
        {&map->targets, BPF_MAP_TYPE_SOCKHASH, sizeof(uint64_t), sizeof(uint64_t), 0, "sock hash"},
        {&map->readers, BPF_MAP_TYPE_SOCKHASH, sizeof(uint64_t), sizeof(uint64_t), 0, "sock hash"},
        {&map->slots, BPF_MAP_TYPE_HASH, sizeof(uint64_t), sizeof(uint32_t), 0, "hash"},
        {&map->seen, BPF_MAP_TYPE_ARRAY, sizeof(uint32_t), sizeof(struct harp_seen), BPF_F_MMAPABLE, "array"},
    };
    for (size_t i = 0; i < sizeof(maps) / sizeof(maps[0]); i++) {
        *maps[i].fd = make_map(maps[i].type, maps[i].key, maps[i].value, maps[i].flags);
        if (*maps[i].fd < 0) {
            int e = errno;
            snprintf(error, error_size, "cannot create a BPF %s: %s", maps[i].what, strerror(e));
            harp_sockmap_close(map);
            return -e;
        }
    }
    void *memory = mmap(NULL, sizeof(struct harp_seen) * HARP_SEEN_SLOTS, PROT_READ | PROT_WRITE, MAP_SHARED, map->seen, 0);
    if (memory == MAP_FAILED) {
        int e = errno;
        snprintf(error, error_size, "cannot map the BPF array into memory: %s", strerror(e));
        harp_sockmap_close(map);
        return -e;
    }
    map->seen_memory = memory;
    // r0 = bpf_sk_redirect_hash(skb, targets, &cookie(skb's socket), 0): send to the partner.
    // A socket with no entry in `targets` (parked, or its partner gone) gets SK_PASS: its input
    // waits in its own BPF queue, charged to its receive buffer, for a read of the socket.
    // An empty skb is a FIN, and is dropped: what it says is already in the socket's state (end
    // of input, which epoll reports and a read returns once the socket's own queue is empty), and
    // the watcher passes the half-close on with shutdown(2) once every byte before it has gone
    // through. Redirected, Linux would send it as an empty write, which the partner's sender
    // takes for a broken pipe; passed up, it would do the same to the socket's own queue if it
    // waits behind bytes for that socket. Either stops that sender for good, and whatever is
    // queued behind it is never sent.
    // A socket with an entry in `slots` (both of a joined pair) has in its slot of `seen` the
    // count of the bytes it took in (see harp_sockmap_taken) and the last 6 bytes of its latest
    // input (zeros for a shorter input): a session whose lead master last sent a whole
    // ReadyForQuery, all of it delivered, is between two messages (see harp_sockmap_tail).
    struct bpf_insn program[] = {
        /* 0 */ INSN(BPF_ALU64 | BPF_MOV | BPF_X, BPF_REG_6, BPF_REG_1, 0, 0),
        /* 1 */ INSN(BPF_LDX | BPF_MEM | BPF_W, BPF_REG_7, BPF_REG_1, offsetof(struct __sk_buff, len), 0),
        /* 2 */ INSN(BPF_JMP | BPF_JNE | BPF_K, BPF_REG_7, 0, 2, 0),
        /* 3 */ INSN(BPF_ALU64 | BPF_MOV | BPF_K, BPF_REG_0, 0, 0, SK_DROP),
        /* 4 */ INSN(BPF_JMP | BPF_EXIT, 0, 0, 0, 0),
        /* 5 */ INSN(BPF_JMP | BPF_CALL, 0, 0, 0, BPF_FUNC_get_socket_cookie),
        /* 6 */ INSN(BPF_STX | BPF_MEM | BPF_DW, BPF_REG_10, BPF_REG_0, -8, 0),
        // r0 = lookup(seen, lookup(slots, &cookie)); not listed: to the redirect.
        /* 7 */ INSN(BPF_LD | BPF_DW | BPF_IMM, BPF_REG_1, BPF_PSEUDO_MAP_FD, 0, map->slots),
        /* 8 */ INSN(0, 0, 0, 0, 0),
        /* 9 */ INSN(BPF_ALU64 | BPF_MOV | BPF_X, BPF_REG_2, BPF_REG_10, 0, 0),
        /* 10 */ INSN(BPF_ALU64 | BPF_ADD | BPF_K, BPF_REG_2, 0, 0, -8),
        /* 11 */ INSN(BPF_JMP | BPF_CALL, 0, 0, 0, BPF_FUNC_map_lookup_elem),
        /* 12 */ INSN(BPF_JMP | BPF_JEQ | BPF_K, BPF_REG_0, 0, 18, 0),  // to the redirect
        /* 13 */ INSN(BPF_LDX | BPF_MEM | BPF_W, BPF_REG_1, BPF_REG_0, 0, 0),
        /* 14 */ INSN(BPF_STX | BPF_MEM | BPF_W, BPF_REG_10, BPF_REG_1, -12, 0),
        /* 15 */ INSN(BPF_LD | BPF_DW | BPF_IMM, BPF_REG_1, BPF_PSEUDO_MAP_FD, 0, map->seen),
        /* 16 */ INSN(0, 0, 0, 0, 0),
        /* 17 */ INSN(BPF_ALU64 | BPF_MOV | BPF_X, BPF_REG_2, BPF_REG_10, 0, 0),
        /* 18 */ INSN(BPF_ALU64 | BPF_ADD | BPF_K, BPF_REG_2, 0, 0, -12),
        /* 19 */ INSN(BPF_JMP | BPF_CALL, 0, 0, 0, BPF_FUNC_map_lookup_elem),
        /* 20 */ INSN(BPF_JMP | BPF_JEQ | BPF_K, BPF_REG_0, 0, 10, 0),  // to the redirect
        // taken += len (atomic: the sockets' inputs may be read on two CPUs at once)
        /* 21 */ INSN(BPF_STX | BPF_ATOMIC | BPF_DW, BPF_REG_0, BPF_REG_7, offsetof(struct harp_seen, taken), BPF_ADD),
        /* 22 */ INSN(BPF_ST | BPF_MEM | BPF_DW, BPF_REG_0, 0, offsetof(struct harp_seen, tail), 0),
        /* 23 */ INSN(BPF_JMP | BPF_JLT | BPF_K, BPF_REG_7, 0, 7, 6),  // shorter than 6: zeros stay
        // bpf_skb_load_bytes(skb, len - 6, value->tail, 6)
        /* 24 */ INSN(BPF_ALU64 | BPF_MOV | BPF_X, BPF_REG_3, BPF_REG_0, 0, 0),
        /* 25 */ INSN(BPF_ALU64 | BPF_ADD | BPF_K, BPF_REG_3, 0, 0, offsetof(struct harp_seen, tail)),
        /* 26 */ INSN(BPF_ALU64 | BPF_MOV | BPF_X, BPF_REG_2, BPF_REG_7, 0, 0),
        /* 27 */ INSN(BPF_ALU64 | BPF_ADD | BPF_K, BPF_REG_2, 0, 0, -6),
        /* 28 */ INSN(BPF_ALU64 | BPF_MOV | BPF_X, BPF_REG_1, BPF_REG_6, 0, 0),
        /* 29 */ INSN(BPF_ALU64 | BPF_MOV | BPF_K, BPF_REG_4, 0, 0, 6),
        /* 30 */ INSN(BPF_JMP | BPF_CALL, 0, 0, 0, BPF_FUNC_skb_load_bytes),
        // r0 = bpf_sk_redirect_hash(skb, targets, &cookie, 0); failed (no partner): SK_PASS.
        /* 31 */ INSN(BPF_ALU64 | BPF_MOV | BPF_X, BPF_REG_1, BPF_REG_6, 0, 0),
        /* 32 */ INSN(BPF_LD | BPF_DW | BPF_IMM, BPF_REG_2, BPF_PSEUDO_MAP_FD, 0, map->targets),
        /* 33 */ INSN(0, 0, 0, 0, 0),
        /* 34 */ INSN(BPF_ALU64 | BPF_MOV | BPF_X, BPF_REG_3, BPF_REG_10, 0, 0),
        /* 35 */ INSN(BPF_ALU64 | BPF_ADD | BPF_K, BPF_REG_3, 0, 0, -8),
        /* 36 */ INSN(BPF_ALU64 | BPF_MOV | BPF_K, BPF_REG_4, 0, 0, 0),
        /* 37 */ INSN(BPF_JMP | BPF_CALL, 0, 0, 0, BPF_FUNC_sk_redirect_hash),
        /* 38 */ INSN(BPF_JMP | BPF_JNE | BPF_K, BPF_REG_0, 0, 1, SK_DROP),  // redirected: done
        /* 39 */ INSN(BPF_ALU64 | BPF_MOV | BPF_K, BPF_REG_0, 0, 0, SK_PASS),
        /* 40 */ INSN(BPF_JMP | BPF_EXIT, 0, 0, 0, 0),
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
    int checked = check_parking(map, error, error_size);
    if (checked != 0) harp_sockmap_close(map);
    return checked;
}

void harp_sockmap_close(struct harp_sockmap *map) {
    if (map->program >= 0) close(map->program);
    if (map->seen_memory) munmap(map->seen_memory, sizeof(struct harp_seen) * HARP_SEEN_SLOTS);
    if (map->seen >= 0) close(map->seen);
    if (map->slots >= 0) close(map->slots);
    if (map->readers >= 0) close(map->readers);
    if (map->targets >= 0) close(map->targets);
    map->targets = map->readers = map->slots = map->seen = map->program = -1;
    map->seen_memory = NULL;
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

int harp_sockmap_track(const struct harp_sockmap *map, uint64_t cookie, uint32_t slot) {
    if (slot >= HARP_SEEN_SLOTS) return -EINVAL;
    memset(&map->seen_memory[slot], 0, sizeof(struct harp_seen));
    return map_update(map->slots, cookie, &slot);
}

void harp_sockmap_untrack(const struct harp_sockmap *map, uint64_t cookie) {
    map_delete(map->slots, cookie);
}

uint64_t harp_sockmap_taken(const struct harp_sockmap *map, uint32_t slot) {
    return slot < HARP_SEEN_SLOTS ? __atomic_load_n(&map->seen_memory[slot].taken, __ATOMIC_RELAXED) : 0;
}

void harp_sockmap_tail(const struct harp_sockmap *map, uint32_t slot, uint8_t tail[6]) {
    memset(tail, 0, 6);
    if (slot < HARP_SEEN_SLOTS) memcpy(tail, (const void *)map->seen_memory[slot].tail, 6);
}

int harp_sockmap_park(const struct harp_sockmap *map, int fd) {
    uint64_t cookie = harp_socket_cookie(fd);
    if (cookie == 0) return -EBADF;
    return map_delete(map->targets, cookie);
}

/// TCP_INFO, and the payload bytes the socket received: bytes_received less the one sequence
/// number a received FIN takes (in the states that follow one).
static int received_payload(int fd, struct tcp_info *info, uint64_t *received) {
    memset(info, 0, sizeof(*info));
    socklen_t length = sizeof(*info);
    if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, info, &length) != 0) return -errno;
    uint64_t in = info->tcpi_bytes_received;
    switch (info->tcpi_state) {
    case 6: /* TIME_WAIT */ case 7: /* CLOSE */ case 8: /* CLOSE_WAIT */ case 9: /* LAST_ACK */ case 11: /* CLOSING */
        if (in > 0) in -= 1;
        break;
    }
    *received = in;
    return 0;
}

int harp_socket_counts(int fd, int mode, uint64_t *received, uint64_t *written, uint64_t *queued_out) {
    // What waits to be read, first: bytes that arrive before TCP_INFO is read then make the count
    // too high, never too low (the safe side: a move or a flush waits a little longer).
    // - Before the join, TCP's receive queue, peeked with MSG_TRUNC (which counts the bytes
    //   without copying them). No buffer: should the peek meet a BPF queue after all, its copy
    //   fails with EFAULT instead of writing anywhere.
    // - Joined, nothing: the kernel path takes input as it arrives, so TCP's queue is empty. It
    //   is not peeked: a peek would return, and so clear, a pending error (a reset the watcher
    //   must see).
    // - Parked, the socket's own BPF queue (SIOCINQ on a socket in a sockmap reports that queue).
    //   Input on its way into it is counted as taken until it is there: too high again.
    ssize_t unread = 0;
    if (mode == HARP_COUNT_UNJOINED) {
        unread = recv(fd, NULL, 1 << 30, MSG_PEEK | MSG_TRUNC | MSG_DONTWAIT);
        if (unread < 0) unread = 0;  // nothing queued, or an error the socket's next user will see
    } else if (mode == HARP_COUNT_PARKED) {
        int parked = 0;
        if (ioctl(fd, SIOCINQ, &parked) != 0) return -errno;
        unread = parked;
    }
    struct tcp_info info;
    uint64_t in = 0;
    int failed = received_payload(fd, &info, &in);
    if (failed != 0) return failed;
    int queued = 0;
    if (ioctl(fd, SIOCOUTQ, &queued) != 0) return -errno;
    *received = in > (uint64_t)unread ? in - (uint64_t)unread : 0;
    *written = info.tcpi_bytes_acked + (uint64_t)queued;
    *queued_out = (uint64_t)queued;
    return 0;
}

int harp_socket_taken(int fd, uint64_t *taken, int *closed) {
    int parked = 0;
    if (ioctl(fd, SIOCINQ, &parked) != 0) return -errno;  // first, as in harp_socket_counts
    struct tcp_info info;
    uint64_t in = 0;
    int failed = received_payload(fd, &info, &in);
    if (failed != 0) return failed;
    *taken = in > (uint64_t)parked ? in - (uint64_t)parked : 0;
    *closed = info.tcpi_state == 7;  // TCP_CLOSE
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

void harp_socket_reset_on_close(int fd) {
    struct linger reset = {.l_onoff = 1, .l_linger = 0};
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &reset, sizeof(reset));
}

void harp_socket_reset_if_unread(int fd) {
    int unread = 0;
    if (ioctl(fd, SIOCINQ, &unread) == 0 && unread > 0) harp_socket_reset_on_close(fd);
}

void harp_socket_reset(int fd) {
    harp_socket_reset_on_close(fd);
    close(fd);
}

void harp_socket_close(int fd) {
    harp_socket_reset_if_unread(fd);
    close(fd);
}
