/*
 * Big-room viewers in C: N raw WebSocket connections read with epoll, so that
 * at 10,000 viewers the figures are the server's and not the reading cost of
 * a Node generator (5-10 us of CPU per socket read there).
 *
 * Built by bench/run.ts with the machine's gcc; same counting as
 * bench/wsraw.ts RawClient and the fan-out job of bench/loadgen.ts:
 *   - every text frame is walked; `chat` and `auth` frames (the byte after
 *     `{"type":"`) are counted per connection, any other text frame apart;
 *   - every k-th viewer in join order (--sample-every k) takes latency samples
 *     from all its chats: now - the poster's stamp (`<seq>|<ms>|` in the
 *     message), both on the wall clock (Node's performance.timeOrigin + now());
 *   - samples and frames count between the `open` and `close` lines the parent
 *     writes on stdin; `drain` waits until frames stop coming, prints one JSON
 *     report on stdout and exits.
 *
 *   viewers --port P --streams s0,s1 --per-stream N --sample-every K
 *           --addresses 127.0.0.2,127.0.0.3 [--max-samples 200000] [--nap-us 200]
 * Prints `ready` on stdout once every viewer has its upgrade answered.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

enum { CONNECTING, UPGRADING, OPEN, CLOSED };

struct conn {
  int fd;
  int state;
  int stream;
  int sampled;
  uint64_t frames;
  uint64_t others;
  /* Bytes of the current frame still to skip when it was counted before it was whole. */
  uint64_t skip;
  /* An incomplete frame (or upgrade answer) carried to the next read. */
  unsigned char *pending;
  size_t pending_len, pending_cap;
};

static struct conn *conns;
static int nconns;
static int epfd;
static char **streams;
static int nstreams;
static int port;
static char **addresses;
static int naddresses;

static double *samples;
/* Which viewer took each sample, for latency by join order. */
static uint32_t *sample_conn;
static size_t nsamples, max_samples = 200000;
static int measuring;
static uint64_t others_total, closed_total;

#define READ_BUF (1 << 20)
static unsigned char rbuf[READ_BUF];

static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static double mono_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static double cpu_ms(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return (ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1e3 +
         (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e3;
}

static void die(const char *what) {
  fprintf(stderr, "viewers: %s: %s\n", what, strerror(errno));
  exit(1);
}

static void keep(struct conn *c, const unsigned char *p, size_t n) {
  if (n > c->pending_cap) {
    c->pending_cap = n < 256 ? 256 : n;
    c->pending = realloc(c->pending, c->pending_cap);
    if (!c->pending) die("realloc");
  }
  memmove(c->pending, p, n);
  c->pending_len = n;
}

static void shut(struct conn *c) {
  if (c->state == CLOSED) return;
  epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
  close(c->fd);
  c->state = CLOSED;
  closed_total++;
}

/* The same parse as wsraw.ts stampOf: the number between the first two `|` after `"message":"`. */
static int stamp_of(const unsigned char *p, size_t n, double *out) {
  static const char key[] = "\"message\":\"";
  const unsigned char *m = memmem(p, n, key, sizeof key - 1);
  if (!m) return 0;
  const unsigned char *end = p + n;
  const unsigned char *a = memchr(m, '|', end - m);
  if (!a) return 0;
  a++;
  const unsigned char *b = memchr(a, '|', end - a);
  if (!b || b - a > 40) return 0;
  char tmp[48];
  memcpy(tmp, a, b - a);
  tmp[b - a] = 0;
  char *e;
  double t = strtod(tmp, &e);
  if (e == tmp || *e) return 0;
  *out = t;
  return 1;
}

/* A client frame must be masked; a zero key leaves the payload as it is. */
static void send_control(struct conn *c, int opcode, const unsigned char *p, size_t n) {
  unsigned char f[6 + 125];
  if (n > 125) n = 125;
  f[0] = 0x80 | opcode;
  f[1] = 0x80 | n;
  memset(f + 2, 0, 4);
  if (n) memcpy(f + 6, p, n);
  if (write(c->fd, f, 6 + n) < 0) { /* the read side sees the close */
  }
}

/* Walks the frames in buf; returns how many bytes were consumed. */
static size_t frames_of(struct conn *c, const unsigned char *buf, size_t len, double now) {
  size_t off = 0;
  while (off + 2 <= len) {
    unsigned char b0 = buf[off], b1 = buf[off + 1];
    uint64_t size = b1 & 0x7f;
    size_t head = 2;
    if (size == 126) {
      if (off + 4 > len) break;
      size = ((uint64_t)buf[off + 2] << 8) | buf[off + 3];
      head = 4;
    } else if (size == 127) {
      if (off + 10 > len) break;
      size = 0;
      for (int i = 0; i < 8; i++) size = (size << 8) | buf[off + 2 + i];
      head = 10;
    }
    int opcode = b0 & 0x0f;
    size_t have = len - off - head;
    int whole = have >= size;
    if (opcode == 1) {
      /* `{"type":"` is 9 bytes: the next one tells `chat` and `auth` from the rest. */
      if (size > 9 && have < 10) break;
      unsigned char kind = size > 9 ? buf[off + head + 9] : 0;
      if (kind == 'c' || kind == 'a') {
        /* A sampled viewer keeps a split chat whole, to read its stamp. */
        if (!whole && c->sampled && kind == 'c' && size <= 65536) break;
        c->frames++;
        if (c->sampled && measuring && kind == 'c' && nsamples < max_samples) {
          double t;
          if (stamp_of(buf + off + head, size < 256 ? size : 256, &t)) {
            sample_conn[nsamples] = (uint32_t)(c - conns);
            samples[nsamples++] = now - t;
          }
        }
      } else {
        c->others++;
        if (measuring) others_total++;
      }
    } else if (opcode == 8) {
      shut(c);
      return len;
    } else if (opcode == 9) {
      if (!whole) break;
      send_control(c, 0xA, buf + off + head, size);
    }
    if (!whole) {
      c->skip = size - have;
      return len;
    }
    off += head + size;
  }
  return off;
}

static void on_data(struct conn *c, unsigned char *buf, size_t len, double now) {
  size_t off = 0;
  if (c->skip) {
    size_t n = len < c->skip ? len : c->skip;
    c->skip -= n;
    off = n;
    if (off == len) return;
  }
  size_t used = frames_of(c, buf + off, len - off, now);
  if (c->state == CLOSED) return;
  off += used;
  if (off < len) keep(c, buf + off, len - off);
}

static void send_upgrade(struct conn *c) {
  char req[512];
  unsigned char key[16];
  static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  char k64[25];
  for (int i = 0; i < 16; i++) key[i] = (unsigned char)rand();
  int j = 0;
  for (int i = 0; i < 15; i += 3) {
    uint32_t v = (key[i] << 16) | (key[i + 1] << 8) | key[i + 2];
    k64[j++] = b64[(v >> 18) & 63];
    k64[j++] = b64[(v >> 12) & 63];
    k64[j++] = b64[(v >> 6) & 63];
    k64[j++] = b64[v & 63];
  }
  k64[j++] = b64[key[15] >> 2];
  k64[j++] = b64[(key[15] & 3) << 4];
  k64[j++] = '=';
  k64[j++] = '=';
  k64[j] = 0;
  int n = snprintf(req, sizeof req,
                   "GET /ws/streams/%s/ HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                   "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n",
                   streams[c->stream], k64);
  if (write(c->fd, req, n) != n) die("write upgrade");
  c->state = UPGRADING;
  struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)(c - conns)};
  epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
}

static int opened;

static void on_upgrade_data(struct conn *c, unsigned char *buf, size_t len, double now) {
  unsigned char *end = memmem(buf, len, "\r\n\r\n", 4);
  if (!end) {
    keep(c, buf, len);
    return;
  }
  if (len < 12 || memmem(buf, 12, "101", 3) == NULL) {
    fprintf(stderr, "viewers: upgrade refused: %.40s\n", buf);
    exit(1);
  }
  c->state = OPEN;
  opened++;
  size_t off = end + 4 - buf;
  c->pending_len = 0;
  if (off < len) on_data(c, buf + off, len - off, now);
}

static void on_event(struct conn *c, uint32_t events) {
  if (c->state == CONNECTING) {
    int err = 0;
    socklen_t l = sizeof err;
    getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &l);
    if (err) {
      errno = err;
      die("connect");
    }
    send_upgrade(c);
    return;
  }
  if (!(events & (EPOLLIN | EPOLLHUP | EPOLLERR))) return;
  /* Level-triggered: one read per event, so one busy socket cannot starve the others. */
  size_t carry = c->pending_len;
  if (carry) memcpy(rbuf, c->pending, carry);
  c->pending_len = 0;
  ssize_t n = read(c->fd, rbuf + carry, READ_BUF - carry);
  if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
    c->pending_len = carry;
    return;
  }
  if (n <= 0) {
    if (c->state == UPGRADING) {
      fprintf(stderr, "viewers: closed during the upgrade\n");
      exit(1);
    }
    shut(c);
    return;
  }
  double now = now_ms();
  if (c->state == UPGRADING) on_upgrade_data(c, rbuf, carry + n, now);
  else on_data(c, rbuf, carry + n, now);
}

static void start_connect(struct conn *c, int i) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
  if (fd < 0) die("socket");
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
  struct sockaddr_in local = {.sin_family = AF_INET};
  inet_pton(AF_INET, addresses[i % naddresses], &local.sin_addr);
  if (bind(fd, (struct sockaddr *)&local, sizeof local) < 0) die("bind");
  struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons(port)};
  inet_pton(AF_INET, "127.0.0.1", &to.sin_addr);
  c->fd = fd;
  c->state = CONNECTING;
  struct epoll_event ev = {.events = EPOLLOUT, .data.u32 = (uint32_t)i};
  if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) < 0) die("epoll_ctl");
  if (connect(fd, (struct sockaddr *)&to, sizeof to) < 0 && errno != EINPROGRESS) die("connect");
}

#define STDIN_TAG 0xffffffffu
static char line[256];
static size_t line_len;

/* The next complete line the parent wrote, or NULL. */
static const char *pop_line(void) {
  static char cmd[256];
  char *nl = memchr(line, '\n', line_len);
  if (!nl) return NULL;
  size_t l = nl - line;
  memcpy(cmd, line, l);
  cmd[l] = 0;
  memmove(line, nl + 1, line_len - l - 1);
  line_len -= l + 1;
  return cmd;
}

static int stdin_done;

/* Reads what the parent wrote; returns its first complete line, or NULL. */
static const char *read_command(void) {
  ssize_t n = read(0, line + line_len, sizeof line - 1 - line_len);
  if (n == 0) {
    /* The parent is gone: stop watching a descriptor that stays readable. */
    epoll_ctl(epfd, EPOLL_CTL_DEL, 0, NULL);
    stdin_done = 1;
  }
  if (n > 0) line_len += n;
  const char *cmd = pop_line();
  return cmd ? cmd : stdin_done ? "eof" : NULL;
}

static struct epoll_event events[1024];

/*
 * After a small batch, a pause before the next epoll_wait: woken for every
 * socket the server writes, the reader would pay a wake-up and a read per
 * frame; a pause of 200 us lets the frames of many sockets (and several
 * frames per socket) gather, for a delay far under the latencies measured.
 */
static long nap_us = 200;

/* One epoll_wait and its events; returns a command from stdin if one came. */
static const char *turn(int timeout) {
  int n = epoll_wait(epfd, events, 1024, timeout);
  const char *cmd = NULL;
  for (int i = 0; i < n; i++) {
    uint32_t tag = events[i].data.u32;
    if (tag == STDIN_TAG) {
      cmd = read_command();
      continue;
    }
    on_event(&conns[tag], events[i].events);
  }
  if (nap_us > 0 && n > 0 && n < 1024) {
    struct timespec nap = {0, nap_us * 1000};
    nanosleep(&nap, NULL);
  }
  return cmd;
}

static int by_value(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static uint64_t total_frames(void) {
  uint64_t n = 0;
  for (int i = 0; i < nconns; i++) n += conns[i].frames;
  return n;
}

static char **split(char *s, int *count) {
  int n = 1;
  for (char *p = s; *p; p++) n += *p == ',';
  char **out = calloc(n, sizeof *out);
  int i = 0;
  for (char *t = strtok(s, ","); t; t = strtok(NULL, ",")) out[i++] = t;
  *count = i;
  return out;
}

int main(int argc, char **argv) {
  int per_stream = 0, sample_every = 50;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!strcmp(argv[i], "--port")) port = atoi(argv[i + 1]);
    else if (!strcmp(argv[i], "--streams")) streams = split(argv[i + 1], &nstreams);
    else if (!strcmp(argv[i], "--per-stream")) per_stream = atoi(argv[i + 1]);
    else if (!strcmp(argv[i], "--sample-every")) sample_every = atoi(argv[i + 1]);
    else if (!strcmp(argv[i], "--addresses")) addresses = split(argv[i + 1], &naddresses);
    else if (!strcmp(argv[i], "--max-samples")) max_samples = strtoul(argv[i + 1], NULL, 10);
    else if (!strcmp(argv[i], "--nap-us")) nap_us = atol(argv[i + 1]);
  }
  if (!port || !nstreams || !naddresses || per_stream <= 0) {
    fprintf(stderr, "viewers: --port, --streams, --per-stream and --addresses are needed\n");
    return 2;
  }
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
  srand(getpid());
  nconns = nstreams * per_stream;
  conns = calloc(nconns, sizeof *conns);
  samples = malloc(max_samples * sizeof *samples);
  sample_conn = malloc(max_samples * sizeof *sample_conn);
  epfd = epoll_create1(0);
  if (epfd < 0) die("epoll_create1");
  fcntl(0, F_SETFL, fcntl(0, F_GETFL) | O_NONBLOCK);
  struct epoll_event sev = {.events = EPOLLIN, .data.u32 = STDIN_TAG};
  epoll_ctl(epfd, EPOLL_CTL_ADD, 0, &sev);

  /* Join order is stream by stream, as loadgen's; at most 200 upgrades in flight. */
  int next = 0;
  for (int s = 0; s < nstreams; s++) {
    for (int v = 0; v < per_stream; v++) {
      int i = s * per_stream + v;
      conns[i].stream = s;
      conns[i].sampled = sample_every > 0 && i % sample_every == 0;
    }
  }
  while (opened < nconns) {
    while (next < nconns && next - opened < 200) {
      start_connect(&conns[next], next);
      next++;
    }
    const char *cmd = turn(1000);
    if (cmd && !strcmp(cmd, "eof")) return 1;
  }
  printf("ready\n");
  fflush(stdout);

  uint64_t frames0 = 0, frames_in_window = 0;
  double t0 = 0, cpu0 = 0, window_ms = 0, cpu_percent = 0;
  for (;;) {
    const char *cmd = turn(-1);
    if (!cmd) continue;
    /* Lines that came in one read are taken in order. */
    for (; cmd; cmd = pop_line()) {
      if (!strcmp(cmd, "open")) {
        nsamples = 0;
        others_total = 0;
        measuring = 1;
        frames0 = total_frames();
        t0 = mono_ms();
        cpu0 = cpu_ms();
      } else if (!strcmp(cmd, "close")) {
        measuring = 0;
        frames_in_window = total_frames() - frames0;
        window_ms = mono_ms() - t0;
        cpu_percent = (cpu_ms() - cpu0) / window_ms * 100;
      } else if (!strcmp(cmd, "drain") || !strcmp(cmd, "eof")) {
        goto drain;
      }
    }
  }
drain:;
  /* Drain: until the frames stop coming (250 ms without one), at most 10 s. */
  uint64_t last = (uint64_t)-1;
  for (int i = 0; i < 40; i++) {
    uint64_t n = total_frames();
    if (n == last) break;
    last = n;
    double until = mono_ms() + 250;
    for (double left = 250; left > 0; left = until - mono_ms()) turn((int)left + 1);
  }

  printf("{\"mode\":\"fanout\",\"viewers\":%d,\"framesInWindow\":%llu,\"windowMs\":%.3f,", nconns,
         (unsigned long long)frames_in_window, window_ms);
  printf("\"cpuPercent\":%.2f,\"closed\":%llu,\"othersInWindow\":%llu,\"received\":{", cpu_percent,
         (unsigned long long)closed_total, (unsigned long long)others_total);
  for (int s = 0; s < nstreams; s++) {
    uint64_t got = 0;
    for (int i = 0; i < nconns; i++)
      if (conns[i].stream == s) got += conns[i].frames;
    printf("%s\"%s\":%llu", s ? "," : "", streams[s], (unsigned long long)got);
  }
  uint64_t others = 0;
  for (int i = 0; i < nconns; i++) others += conns[i].others;
  /* loadgen's name for the non-chat frames every viewer received. */
  printf("},\"refusedAnswers\":%llu,\"readingViewers\":{", (unsigned long long)others);
  for (int s = 0; s < nstreams; s++) printf("%s\"%s\":%d", s ? "," : "", streams[s], per_stream);
  /* p50 by tenth of the join order: a chat reaching the first viewers late waited before its
   * fan-out began; one reaching the last ones later than the first waited in the fan-out. */
  printf("},\"p50ByJoinTenth\":[");
  double *part = malloc((nsamples + 1) * sizeof *part);
  for (int d = 0; d < 10; d++) {
    size_t m = 0;
    for (size_t i = 0; i < nsamples; i++)
      if ((int)((uint64_t)sample_conn[i] * 10 / nconns) == d) part[m++] = samples[i];
    qsort(part, m, sizeof *part, by_value);
    printf("%s%.3f", d ? "," : "", m ? part[(m - 1) / 2] : -1.0);
  }
  free(part);
  printf("],\"latencies\":[");
  for (size_t i = 0; i < nsamples; i++) printf("%s%.3f", i ? "," : "", samples[i]);
  printf("]}\n");
  fflush(stdout);
  return 0;
}
