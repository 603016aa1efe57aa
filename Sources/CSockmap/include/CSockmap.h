#include <stddef.h>
#include <stdint.h>

/// The kernel data path: two BPF sock hashes and one sk_skb verdict program that hands every
/// byte a joined socket receives straight to its partner's send queue, with no copy to user
/// space and no wake-up of this process.
///
///   targets:  cookie(socket) -> partner   (no program; the socket to send to)
///   readers:  cookie(socket) -> socket    (the verdict program runs on these sockets' input)
///
/// Taking a socket out of `readers` stops the kernel reading it: its input then stays in its TCP
/// receive queue, where TCP flow control holds the sender back.
struct harp_sockmap {
    int targets;
    int readers;
    int program;
};

/// Creates the maps and loads and attaches the program. 0, or -errno with `error` describing
/// the step that failed (and the verifier's log, if it refused the program).
int harp_sockmap_open(struct harp_sockmap *map, char *error, int error_size);
void harp_sockmap_close(struct harp_sockmap *map);

/// Joins two connected TCP sockets both ways, then has the kernel read whatever already waits
/// in their receive queues. 0, or -errno with nothing left joined; then `started` says whether
/// the kernel may already have taken input (the sockets can then not be used on their own).
int harp_sockmap_join(const struct harp_sockmap *map, int a, int b, int *started);

/// Stops the kernel reading `fd` (its input waits in its receive queue from now on).
int harp_sockmap_stop_reading(const struct harp_sockmap *map, int fd);

/// Takes `fd` out of both maps: after this, and once its partner is out too, both are plain sockets.
int harp_sockmap_leave(const struct harp_sockmap *map, int fd);

/// Payload bytes taken out of `fd`'s receive queue (by the kernel data path, or by a read), and
/// bytes that have entered its send queue (acknowledged plus still queued; a connecting socket's
/// SYN counts as one, so compare differences). -errno on failure.
/// `kernel_reads`: the socket is still read by the kernel path (its receive queue is then empty
/// and not looked at).
int harp_socket_counts(int fd, int kernel_reads, uint64_t *received, uint64_t *written, uint64_t *queued);

/// The socket's cookie (SO_COOKIE), 0 on failure.
uint64_t harp_socket_cookie(int fd);

/// epoll for the thread that watches joined pairs (Swift's Glibc module has no sys/epoll.h).
enum { HARP_WATCH_EOF = 1, HARP_WATCH_ERROR = 2 };
int harp_watch_create(void);
/// Edge-triggered: end of input (FIN) and errors, reported with `token`.
int harp_watch_add(int watch, int fd, uint64_t token);
int harp_watch_remove(int watch, int fd);
/// Up to `max` events: their tokens and HARP_WATCH_* flags. -errno on failure (EINTR included).
int harp_watch_wait(int watch, uint64_t *tokens, int *flags, int max, int timeout_ms);

/// The socket's pending error (SO_ERROR, which reading clears), 0 if none.
int harp_socket_error(int fd);
/// 1 if the socket has nothing left to read and its peer has sent FIN, else 0.
int harp_socket_at_eof(int fd);
/// Bytes waiting in the socket's own BPF queue (SIOCINQ on a socket in a sockmap). Input the
/// kernel took just as the socket's reader was detached is passed up to that queue instead of
/// being redirected; only a read of the socket, while it is still in a sockmap, returns it.
/// -errno on failure.
int harp_socket_parked(int fd);
/// A non-blocking read of up to `length` bytes: the count, or -errno.
long harp_socket_take(int fd, void *buffer, size_t length);
