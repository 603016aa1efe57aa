#include <stddef.h>
#include <stdint.h>

/// The kernel data path: two BPF sock hashes and one sk_skb verdict program that hands every
/// byte a joined socket receives straight to its partner's send queue, with no copy to user
/// space and no wake-up of this process; and two maps in which the program records what it saw.
///
///   targets:  cookie(socket) -> partner   (no program; the socket to send to)
///   readers:  cookie(socket) -> socket    (the verdict program runs on these sockets' input)
///   slots:    cookie(socket) -> slot      (the sockets whose input is tracked)
///   seen:     slot -> struct harp_seen    (input count and last 6 bytes, mapped into memory)
///
/// A socket stays in `readers` until it is closed (closing takes it out of both maps). Its
/// program is never detached while it lives: input that arrives while the program is being
/// detached is dropped by Linux (`sk_psock_verdict_recv` finds no program and returns SK_DROP).
/// A socket with no entry in `targets` is "parked": the program passes its input up to its own
/// BPF queue, which a read of the socket returns in order and which is charged to its receive
/// buffer, so that TCP flow control holds the sender back.

/// What the program records of a tracked socket's input, in its slot of `seen`.
struct harp_seen {
    uint64_t taken;
    uint8_t tail[8];
};

/// Slots in `seen`: sockets whose input can be tracked at once.
enum { HARP_SEEN_SLOTS = 1 << 17 };

struct harp_sockmap {
    int targets;
    int readers;
    /// cookie -> slot (a plain hash): the tracked sockets.
    int slots;
    /// slot -> struct harp_seen (an array, mapped into this process at `seen_memory`).
    int seen;
    int program;
    struct harp_seen *seen_memory;
};

/// Creates the maps and loads and attaches the program. 0, or -errno with `error` describing
/// the step that failed (and the verifier's log, if it refused the program).
int harp_sockmap_open(struct harp_sockmap *map, char *error, int error_size);
void harp_sockmap_close(struct harp_sockmap *map);

/// Joins two connected TCP sockets both ways, then has the kernel read whatever already waits
/// in their receive queues. 0, or -errno with nothing left joined; then `started` says whether
/// the kernel may already have taken input (the sockets can then not be used on their own).
int harp_sockmap_join(const struct harp_sockmap *map, int a, int b, int *started);

/// Tracks a socket in `slot` (which the caller hands out, one socket each): from now on the
/// program counts its input there and records the last 6 bytes of each input (zeros for an
/// input shorter than that). Read with plain memory loads, no system call. 0, or -errno.
int harp_sockmap_track(const struct harp_sockmap *map, uint64_t cookie, uint32_t slot);
/// Stops tracking a socket (its slot may then be handed out again).
void harp_sockmap_untrack(const struct harp_sockmap *map, uint64_t cookie);
/// The bytes of input the program has seen for the socket in `slot`.
uint64_t harp_sockmap_taken(const struct harp_sockmap *map, uint32_t slot);
/// The last 6 bytes of the latest input of the socket in `slot`.
void harp_sockmap_tail(const struct harp_sockmap *map, uint32_t slot, uint8_t tail[6]);

/// Parks `fd`: its input is no longer passed to its partner but kept for a read of `fd`.
int harp_sockmap_park(const struct harp_sockmap *map, int fd);

/// How `harp_socket_counts` finds what waits to be read.
enum {
    /// Not in the sockmap: TCP's receive queue.
    HARP_COUNT_UNJOINED = 0,
    /// Read by the kernel path: nothing waits.
    HARP_COUNT_JOINED = 1,
    /// Parked: its own BPF queue.
    HARP_COUNT_PARKED = 2,
};

/// Payload bytes taken out of `fd`'s receive queues (read, or passed on by the kernel data
/// path; not what waits to be read, see the HARP_COUNT_* `mode`), and bytes that have entered
/// its send queue (acknowledged plus still queued; a connecting socket's SYN counts as one, so
/// compare differences). -errno on failure.
int harp_socket_counts(int fd, int mode, uint64_t *received, uint64_t *written, uint64_t *queued);

/// `harp_socket_counts`' `received` for a parked socket (payload received, less what waits in
/// its own queue), and whether the socket is closed (TCP_CLOSE: after a FIN both ways, or a
/// reset, which the count cannot tell apart). Two system calls. -errno on failure.
int harp_socket_taken(int fd, uint64_t *taken, int *closed);

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

/// Closes a joined socket as TCP closes one with unread input: with a reset if its own queue
/// (parked input) holds any. Otherwise Linux sends a FIN (TCP's receive queue is empty), and a
/// peer held back by a zero window learns that nobody reads only at its next window probe, which
/// backs off to seconds.
void harp_socket_close(int fd);
/// Makes the next close of `fd` a reset (SO_LINGER 0), by whoever closes it.
void harp_socket_reset_on_close(int fd);
/// Makes the next close of `fd` a reset if its own queue holds parked input (see harp_socket_close).
void harp_socket_reset_if_unread(int fd);
/// Closes `fd` with a reset, whatever it holds: for a stream the proxy cannot pass on whole, so
/// that the peer reads an error rather than an end of stream.
void harp_socket_reset(int fd);
