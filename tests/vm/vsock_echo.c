/* vsock_echo: the raw baseline for the vm-test benchmark.
 *
 *   vsock_echo serve PORT                  (guest only) echo every byte received on vsock PORT
 *   vsock_echo ping UDS PORT COUNT SIZE    (host) dial the guest's PORT through vhost-device-vsock's
 *                                          Unix socket UDS ("CONNECT PORT\n" / "OK ...\n"), then time
 *                                          COUNT round trips of SIZE bytes
 *   vsock_echo sink PORT FILE              (guest only) write one connection's bytes to FILE, fsync, close
 *   vsock_echo send UDS PORT FILE          (host) send FILE raw to the guest's PORT, time it to the close
 *
 * ping prints a summary in hvhost's format so the two can be compared line for line:
 *   done round_trips=N p50_us=X p99_us=Y max_us=Z
 *
 * Safety: `serve` and `sink` open an AF_VSOCK socket, which must never happen on a development machine; it refuses
 * to run unless HVAGENT_VM_GUEST=1, which only the vm-test guest's /init sets. `ping` and `send` use AF_UNIX only.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#ifndef AF_VSOCK
#define AF_VSOCK 40
#endif

/* struct sockaddr_vm from <linux/vm_sockets.h>, spelled out so the program builds without kernel
 * headers. */
struct vm_addr {
    unsigned short family;
    unsigned short reserved1;
    unsigned int port;
    unsigned int cid;
    unsigned char flags;
    unsigned char zero[3];
};

#define CID_ANY 0xFFFFFFFFu

static int die(const char *what) {
    fprintf(stderr, "vsock_echo: %s: %s\n", what, strerror(errno));
    return 1;
}

static int write_all(int fd, const char *buf, size_t len) {
    while (len > 0) {
        ssize_t n = write(fd, buf, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        buf += n;
        len -= (size_t)n;
    }
    return 0;
}

static int read_all(int fd, char *buf, size_t len) {
    while (len > 0) {
        ssize_t n = read(fd, buf, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        buf += n;
        len -= (size_t)n;
    }
    return 0;
}

static void echo_until_eof(int fd) {
    char buf[4096];
    for (;;) {
        ssize_t n = read(fd, buf, sizeof buf);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0 || write_all(fd, buf, (size_t)n) != 0)
            return;
    }
}

/* A listening vsock socket on PORT, only inside the vm-test guest; -2 elsewhere, -1 on an error. */
static int vsock_listen(unsigned int port) {
    const char *guest = getenv("HVAGENT_VM_GUEST");
    if (guest == NULL || strcmp(guest, "1") != 0) {
        fprintf(stderr, "vsock_echo: serve and sink run only inside the vm-test guest (HVAGENT_VM_GUEST=1)\n");
        return -2;
    }
    int lfd = socket(AF_VSOCK, SOCK_STREAM, 0);
    if (lfd < 0)
        return die("socket(AF_VSOCK)");
    struct vm_addr addr = {.family = AF_VSOCK, .port = port, .cid = CID_ANY};
    if (bind(lfd, (struct sockaddr *)&addr, sizeof addr) != 0)
        return die("bind");
    if (listen(lfd, 4) != 0)
        return die("listen");
    printf("listening port=%u\n", port);
    fflush(stdout);
    return lfd;
}

static int serve(unsigned int port) {
    int lfd = vsock_listen(port);
    if (lfd < 0)
        return lfd == -2 ? 2 : 1;
    for (;;) {
        int fd = accept(lfd, NULL, NULL);
        if (fd < 0) {
            if (errno == EINTR)
                continue;
            return die("accept");
        }
        echo_until_eof(fd);
        close(fd);
    }
}

/* Reads the "OK <port>\n" answer one byte at a time so that no echoed byte is swallowed. */
static int hybrid_connect(const char *path, unsigned int port) {
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    if (fd < 0)
        return -1;
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof addr.sun_path) {
        errno = ENAMETOOLONG;
        return -1;
    }
    strcpy(addr.sun_path, path);
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0)
        return -1;
    char line[64];
    int len = snprintf(line, sizeof line, "CONNECT %u\n", port);
    if (write_all(fd, line, (size_t)len) != 0)
        return -1;
    size_t got = 0;
    while (got < sizeof line - 1) {
        if (read_all(fd, line + got, 1) != 0)
            return -1;
        if (line[got++] == '\n')
            break;
    }
    line[got] = '\0';
    if (strncmp(line, "OK ", 3) != 0) {
        errno = ECONNREFUSED;
        return -1;
    }
    return fd;
}

static double now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

static int by_value(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static int ping(const char *path, unsigned int port, long count, long size) {
    if (count < 1 || size < 1 || size > 4096) {
        fprintf(stderr, "vsock_echo: COUNT must be >= 1 and SIZE in 1..4096\n");
        return 2;
    }
    int fd = hybrid_connect(path, port);
    if (fd < 0)
        return die("hybrid connect");
    char out[4096], in[4096];
    memset(out, 0x5a, (size_t)size);
    double *rtt = calloc((size_t)count, sizeof *rtt);
    if (rtt == NULL)
        return die("calloc");
    for (long i = 0; i < count; i++) {
        double start = now_us();
        if (write_all(fd, out, (size_t)size) != 0 || read_all(fd, in, (size_t)size) != 0)
            return die("round trip");
        rtt[i] = now_us() - start;
        if (memcmp(in, out, (size_t)size) != 0) {
            fprintf(stderr, "vsock_echo: echo differs from what was sent\n");
            return 1;
        }
    }
    close(fd);
    qsort(rtt, (size_t)count, sizeof *rtt, by_value);
    printf("done round_trips=%ld p50_us=%.1f p99_us=%.1f max_us=%.1f\n", count, rtt[count / 2],
           rtt[(count * 99) / 100 < count ? (count * 99) / 100 : count - 1], rtt[count - 1]);
    free(rtt);
    return 0;
}

/* The raw baseline of the file-copy scenario: one connection's bytes written to FILE, fsynced, then the
 * connection closed, which is what tells the sender the bytes are on disk. */
static int sink(unsigned int port, const char *file) {
    int lfd = vsock_listen(port);
    if (lfd < 0)
        return lfd == -2 ? 2 : 1;
    int fd = accept(lfd, NULL, NULL);
    if (fd < 0)
        return die("accept");
    FILE *out = fopen(file, "wb");
    if (out == NULL)
        return die("fopen");
    static char buf[65536];
    long long total = 0;
    for (;;) {
        ssize_t n = read(fd, buf, sizeof buf);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        if (fwrite(buf, 1, (size_t)n, out) != (size_t)n)
            return die("fwrite");
        total += n;
    }
    if (fflush(out) != 0 || fsync(fileno(out)) != 0)
        return die("fsync");
    fclose(out);
    close(fd);
    printf("sunk bytes=%lld\n", total);
    return 0;
}

/* Sends FILE raw to the guest's PORT and waits for the sink to close: the time to the bytes on its disk. */
static int send_file(const char *path, unsigned int port, const char *file) {
    FILE *in = fopen(file, "rb");
    if (in == NULL)
        return die("fopen");
    int fd = hybrid_connect(path, port);
    if (fd < 0)
        return die("hybrid connect");
    static char buf[65536];
    long long total = 0;
    double start = now_us();
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, in)) > 0) {
        if (write_all(fd, buf, n) != 0)
            return die("write");
        total += (long long)n;
    }
    shutdown(fd, SHUT_WR);
    while (read(fd, buf, sizeof buf) > 0) {
    }
    double took = now_us() - start;
    printf("sent bytes=%lld ms=%.1f mib_per_s=%.1f\n", total, took / 1e3, (double)total / 1048576.0 / (took / 1e6));
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 3 && strcmp(argv[1], "serve") == 0)
        return serve((unsigned int)strtoul(argv[2], NULL, 0));
    if (argc == 6 && strcmp(argv[1], "ping") == 0)
        return ping(argv[2], (unsigned int)strtoul(argv[3], NULL, 0), strtol(argv[4], NULL, 0),
                    strtol(argv[5], NULL, 0));
    if (argc == 4 && strcmp(argv[1], "sink") == 0)
        return sink((unsigned int)strtoul(argv[2], NULL, 0), argv[3]);
    if (argc == 5 && strcmp(argv[1], "send") == 0)
        return send_file(argv[2], (unsigned int)strtoul(argv[3], NULL, 0), argv[4]);
    fprintf(stderr, "usage: vsock_echo serve PORT | vsock_echo ping UDS PORT COUNT SIZE | vsock_echo sink PORT FILE"
                    " | vsock_echo send UDS PORT FILE\n");
    return 2;
}
