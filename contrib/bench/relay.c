// The floor of a user-space TCP proxy, for contrib/bench/throughput.sh (RELAY=1): what any proxy
// that passes bytes through its own memory pays per transaction, with almost nothing else done.
// One epoll loop per thread, each with its own SO_REUSEPORT listener on 127.0.0.1; a client is
// connected to the backend (blocking, on the loop) and each read is written to its partner at
// once. No buffering beyond one read, no backpressure, no half-close (either side's end closes
// both), no error handling worth the name: a benchmark reference, not a proxy.
//   relay LISTEN_PORT BACKEND_PORT [THREADS]
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

enum { max_fd = 65536 };
static int listen_port, backend_port;
// Each socket's partner; -1 once the pair is closed (a later event of the same batch for the
// other socket is then skipped).
static int partner[max_fd];

static struct sockaddr_in loopback(int port) {
    struct sockaddr_in address = {.sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    return address;
}

static void watch(int epoll, int fd) {
    struct epoll_event event = {.events = EPOLLIN, .data.fd = fd};
    epoll_ctl(epoll, EPOLL_CTL_ADD, fd, &event);
}

static void serve(int epoll, int listener) {
    int client = accept4(listener, NULL, NULL, 0), one = 1;
    if (client < 0) return;
    int server = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in backend = loopback(backend_port);
    if (client >= max_fd || server >= max_fd || connect(server, (struct sockaddr *)&backend, sizeof backend) != 0) {
        close(client);
        close(server);
        return;
    }
    setsockopt(client, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    setsockopt(server, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    partner[client] = server;
    partner[server] = client;
    watch(epoll, client);
    watch(epoll, server);
}

static void *loop(void *unused) {
    (void)unused;
    static __thread char buffer[65536];
    int epoll = epoll_create1(0), one = 1;
    int listener = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    setsockopt(listener, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
    setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in address = loopback(listen_port);
    if (bind(listener, (struct sockaddr *)&address, sizeof address) != 0 || listen(listener, 512) != 0) {
        perror("relay: bind");
        exit(1);
    }
    watch(epoll, listener);
    struct epoll_event events[64];
    for (;;) {
        int ready = epoll_wait(epoll, events, 64, -1);
        for (int i = 0; i < ready; i++) {
            int fd = events[i].data.fd;
            if (fd == listener) {
                serve(epoll, listener);
                continue;
            }
            int other = partner[fd];
            if (other < 0) continue;
            ssize_t got = read(fd, buffer, sizeof buffer);
            if (got <= 0) {
                partner[fd] = partner[other] = -1;
                close(other);
                close(fd);
                continue;
            }
            for (ssize_t sent = 0, n; sent < got; sent += n) {
                n = write(other, buffer + sent, (size_t)(got - sent));
                if (n <= 0) break;
            }
        }
    }
    return NULL;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: relay LISTEN_PORT BACKEND_PORT [THREADS]\n");
        return 2;
    }
    listen_port = atoi(argv[1]);
    backend_port = atoi(argv[2]);
    int threads = argc > 3 ? atoi(argv[3]) : (int)sysconf(_SC_NPROCESSORS_ONLN);
    if (threads < 1) threads = 1;
    signal(SIGPIPE, SIG_IGN);  // a write to a peer that has gone fails instead
    pthread_t thread;
    for (int i = 0; i < threads; i++) pthread_create(&thread, NULL, loop, NULL);
    pthread_join(thread, NULL);
    return 0;
}
