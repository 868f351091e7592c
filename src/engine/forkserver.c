#define _GNU_SOURCE   /* accept4, ppoll, MSG_CMSG_CLOEXEC, SO_PEERCRED */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "clock.h"
#include "forkserver.h"
#include "pidfd.h"
#include "proc.h"

/*
** Wire format (native byte order: both ends are forks of one binary).
** Control connection (SOCK_SEQPACKET, one record per message):
**   client -> server  HELLO {magic, M_HELLO, key[32]}        first, once
**   server -> client  WELCOME {magic, M_WELCOME, 0, 0}       the key was right
**   client -> server  SPAWN {magic, M_SPAWN, 0, 0} + 1 fd    the status channel
** Status channel (SOCK_STREAM socket pair), client -> child:
**   REQUEST {magic, M_REQUEST, nfds, 0, u64 length}
**   FDS {magic, M_FDS, 0, n} + n fds (SCM_RIGHTS), until nfds have gone
**   the payload: length bytes
** Status channel, server -> client:
**   PID {magic, M_PID, pid, 0} + its pidfd when there is one
**   STATUS {magic, M_STATUS, wait status, 0}   then the server closes it
**   ERROR {magic, M_ERROR, errno, 0}           no child; then closed
*/
#define FS_MAGIC 0x3153464du      /* "MFS1" */
#define FDS_PER_MSG 250           /* below the kernel's SCM_MAX_FD (253) */
#define STALL 30.0                /* seconds without progress: the server is stuck */

enum { M_HELLO = 1, M_WELCOME, M_SPAWN, M_PID, M_STATUS, M_ERROR, M_REQUEST, M_FDS };

typedef struct fs_msg { uint32_t magic, type; int32_t value; uint32_t n; } fs_msg;
typedef struct fs_hello { uint32_t magic, type; unsigned char key[MP_FS_KEYLEN]; } fs_hello;
typedef struct fs_request { uint32_t magic, type, nfds, pad; uint64_t length; } fs_request;

/* ---- Small socket helpers ------------------------------------------------------- */

/* Sends one record with `nfds` fds attached. */
static ssize_t send_fds(int sock, const void *buf, size_t len, const int *fds, size_t nfds, int flags) {
  union { struct cmsghdr h; char space[CMSG_SPACE(sizeof(int) * FDS_PER_MSG)]; } u;
  struct iovec iov = { (void *)buf, len };
  struct msghdr m = { .msg_iov = &iov, .msg_iovlen = 1 };
  if (nfds > 0) {
    memset(&u, 0, sizeof u);
    m.msg_control = u.space;
    m.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
    struct cmsghdr *c = CMSG_FIRSTHDR(&m);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
    memcpy(CMSG_DATA(c), fds, sizeof(int) * nfds);
  }
  ssize_t n;
  do n = sendmsg(sock, &m, flags | MSG_NOSIGNAL); while (n < 0 && errno == EINTR);
  return n;
}

/*
** Receives up to len bytes and the fds that came with them (close-on-exec),
** appended to fds[*nfds .. max). Fds beyond `max`, or a truncated control
** message, make it fail with EPROTO (the fds received are closed).
*/
static ssize_t recv_fds(int sock, void *buf, size_t len, int *fds, size_t *nfds, size_t max, int flags) {
  union { struct cmsghdr h; char space[CMSG_SPACE(sizeof(int) * FDS_PER_MSG)]; } u;
  struct iovec iov = { buf, len };
  struct msghdr m = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.space,
                      .msg_controllen = sizeof u.space };
  ssize_t n;
  do n = recvmsg(sock, &m, flags | MSG_CMSG_CLOEXEC); while (n < 0 && errno == EINTR);
  if (n < 0) return n;
  int bad = (m.msg_flags & MSG_CTRUNC) != 0;
  for (struct cmsghdr *c = CMSG_FIRSTHDR(&m); c != NULL; c = CMSG_NXTHDR(&m, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    size_t k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    int got[FDS_PER_MSG + 8];
    if (k > sizeof got / sizeof got[0]) k = sizeof got / sizeof got[0];
    memcpy(got, CMSG_DATA(c), k * sizeof(int));
    for (size_t i = 0; i < k; i++) {
      if (fds != NULL && *nfds < max) fds[(*nfds)++] = got[i];
      else { close(got[i]); bad = 1; }
    }
  }
  if (bad) { errno = EPROTO; return -1; }
  return n;
}

/* Waits for `events` on fd until `deadline`: 0, ETIMEDOUT, or an errno. */
static int wait_fd(int fd, short events, double deadline, short *revents) {
  for (;;) {
    double left = deadline - mp_now();
    if (left <= 0) return ETIMEDOUT;
    struct pollfd p = { fd, events, 0 };
    int r = poll(&p, 1, left > 1e6 ? -1 : (int)(left * 1000) + 1);
    if (r > 0) { if (revents) *revents = p.revents; return 0; }
    if (r < 0 && errno != EINTR) return errno;
  }
}

/* Reads exactly len bytes from a blocking stream (fds, if any, appended as recv_fds). */
static int read_full(int sock, void *buf, size_t len, int *fds, size_t *nfds, size_t max) {
  char *p = buf;
  while (len > 0) {
    ssize_t n = recv_fds(sock, p, len, fds, nfds, max, 0);
    if (n < 0) return errno;
    if (n == 0) return EPIPE;
    p += n;
    len -= (size_t)n;
  }
  return 0;
}

static void send_msg(int sock, uint32_t type, int32_t value, int fd) {
  fs_msg m = { FS_MAGIC, type, value, 0 };
  send_fds(sock, &m, sizeof m, &fd, fd >= 0, MSG_DONTWAIT);
}

/* ---- Address ------------------------------------------------------------------- */

static int random_key(unsigned char *key) {
  size_t got = 0;
  while (got < MP_FS_KEYLEN) {
    ssize_t n = getrandom(key + got, MP_FS_KEYLEN - got, 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      return errno;
    }
    got += (size_t)n;
  }
  return 0;
}

static int make_dir(mp_fs_addr *a, const char *tmp) {
  int n = snprintf(a->dir, sizeof a->dir, "%s/mplua-fs-XXXXXX", tmp);
  if (n < 0 || (size_t)n + 3 > sizeof a->path) return ENAMETOOLONG;
  if (mkdtemp(a->dir) == NULL) return errno;   /* mode 0700: nobody else may enter */
  size_t len = strlen(a->dir);                 /* room checked above */
  memcpy(a->path, a->dir, len);
  memcpy(a->path + len, "/s", 3);
  return 0;
}

int mp_fs_listen(mp_fs_addr *a, int *listen_fd) {
  memset(a, 0, sizeof *a);
  *listen_fd = -1;
  const char *tmp = getenv("TMPDIR");
  int err = tmp != NULL && *tmp != '\0' ? make_dir(a, tmp) : ENOENT;
  if (err) err = make_dir(a, "/tmp");
  if (err) { a->dir[0] = '\0'; return err; }
  err = random_key(a->key);
  int fd = -1;
  if (err == 0) {
    fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) err = errno;
  }
  if (err == 0) {
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    memcpy(sa.sun_path, a->path, strlen(a->path) + 1);
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) != 0 || listen(fd, SOMAXCONN) != 0) err = errno;
  }
  if (err) {
    if (fd >= 0) close(fd);
    mp_fs_unlink(a);
    return err;
  }
  *listen_fd = fd;
  return 0;
}

void mp_fs_unlink(const mp_fs_addr *a) {
  if (a->dir[0] == '\0') return;
  unlink(a->path);
  rmdir(a->dir);
}

/* ---- The server ------------------------------------------------------------------ */

typedef struct client { int fd; int authed; } client;
typedef struct kid { pid_t pid; int channel; } kid;

static struct {
  client *clients;
  size_t nclients, cap_clients;
  kid *kids;
  size_t nkids, cap_kids;
  int listen_fd, lifeline;
  struct sigaction saved[NSIG];       /* the dispositions the children get back */
  int changed[NSIG];
  sigset_t mask;                      /* the signal mask the children get back */
} srv;

static volatile sig_atomic_t child_ended;

static void on_sigchld(int sig) { (void)sig; child_ended = 1; }

static int grow(void **arr, size_t *cap, size_t n, size_t size) {
  if (n < *cap) return 0;
  size_t c = *cap ? *cap * 2 : 16;
  void *p = realloc(*arr, c * size);
  if (p == NULL) return ENOMEM;
  *arr = p;
  *cap = c;
  return 0;
}

/*
** The server itself: Ctrl-C at the terminal reaches the whole process group
** and must not take the server down with the script (the children get it as
** forked ones would); handlers the owner installed (mp.signal's, the host's)
** would only record signals that the server never looks at, so they go back
** to their default. SIGCHLD is blocked except inside ppoll.
*/
static void server_signals(void) {
  sigset_t chld;
  sigemptyset(&chld);
  sigaddset(&chld, SIGCHLD);
  sigprocmask(SIG_BLOCK, &chld, &srv.mask);
  for (int s = 1; s < NSIG; s++) {
    if (s == SIGKILL || s == SIGSTOP) continue;
    if (sigaction(s, NULL, &srv.saved[s]) != 0) continue;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sigemptyset(&sa.sa_mask);
    void (*h)(int) = srv.saved[s].sa_handler;
    if (s == SIGINT || s == SIGPIPE) sa.sa_handler = SIG_IGN;
    else if (s == SIGCHLD) sa.sa_handler = on_sigchld;
    else if (h != SIG_DFL && h != SIG_IGN) sa.sa_handler = SIG_DFL;
    else continue;
    if (sigaction(s, &sa, NULL) == 0) srv.changed[s] = 1;
  }
}

/* In a new child: what the server changed goes back, and the server's fds go. */
static void child_cleanup(int channel) {
  for (int s = 1; s < NSIG; s++)
    if (srv.changed[s]) sigaction(s, &srv.saved[s], NULL);
  sigprocmask(SIG_SETMASK, &srv.mask, NULL);
  if (srv.listen_fd >= 0) close(srv.listen_fd);
  if (srv.lifeline >= 0) close(srv.lifeline);
  for (size_t i = 0; i < srv.nclients; i++) close(srv.clients[i].fd);
  for (size_t i = 0; i < srv.nkids; i++)
    if (srv.kids[i].channel != channel) close(srv.kids[i].channel);
  free(srv.clients);
  free(srv.kids);
  memset(&srv, 0, sizeof srv);
}

static void drop_client(size_t i) {
  close(srv.clients[i].fd);
  srv.clients[i] = srv.clients[--srv.nclients];
}

static void reap(void) {
  child_ended = 0;
  int status;
  pid_t pid;
  while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
    for (size_t i = 0; i < srv.nkids; i++) {
      if (srv.kids[i].pid != pid) continue;
      send_msg(srv.kids[i].channel, M_STATUS, status, -1);
      close(srv.kids[i].channel);
      srv.kids[i] = srv.kids[--srv.nkids];
      break;
    }
  }
}

/* The owner is gone: no new clients, nothing left in the file system. */
static void stop_listening(const mp_fs_addr *a) {
  if (srv.listen_fd >= 0) { close(srv.listen_fd); srv.listen_fd = -1; }
  if (srv.lifeline >= 0) { close(srv.lifeline); srv.lifeline = -1; }
  mp_fs_unlink(a);
}

static int same_key(const unsigned char *a, const unsigned char *b) {
  unsigned char d = 0;
  for (int i = 0; i < MP_FS_KEYLEN; i++) d |= a[i] ^ b[i];   /* constant time */
  return d == 0;
}

/*
** Forks a child for a SPAWN. Returns 1 in the child (then *channel is its
** channel), 0 in the server.
*/
static int spawn(int ch) {
  if (srv.lifeline < 0) {                       /* owner gone: no new children */
    send_msg(ch, M_ERROR, ESHUTDOWN, -1);
    close(ch);
    return 0;
  }
  if (grow((void **)&srv.kids, &srv.cap_kids, srv.nkids, sizeof(kid)) != 0) {
    send_msg(ch, M_ERROR, ENOMEM, -1);
    close(ch);
    return 0;
  }
  pid_t pid = mp_fork_bare(MP_FORK_SERVED);
  if (pid == 0) return 1;
  if (pid < 0) {
    send_msg(ch, M_ERROR, -pid, -1);
    close(ch);
    return 0;
  }
  /* Not reaped before this: the pidfd names this very child. */
  int pidfd = mp_pidfd_open(pid);
  send_msg(ch, M_PID, pid, pidfd);
  if (pidfd >= 0) close(pidfd);
  srv.kids[srv.nkids++] = (kid){ pid, ch };
  return 0;
}

/*
** One message from client i. Anything but the protocol drops the client (and
** closes whatever fds came with it). Returns 1 in a forked child.
*/
static int serve_client(size_t i, const mp_fs_addr *a, int *channel) {
  client *c = &srv.clients[i];
  union { fs_hello h; fs_msg m; char raw[64]; } buf;
  int fds[4];
  size_t nfds = 0;
  ssize_t n = recv_fds(c->fd, &buf, sizeof buf, fds, &nfds, 4, MSG_DONTWAIT);
  if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return 0;
  int ok = n > 0 && buf.m.magic == FS_MAGIC;
  if (ok && !c->authed) {
    ok = n == sizeof buf.h && buf.h.type == M_HELLO && nfds == 0 && same_key(buf.h.key, a->key);
    if (ok) {
      c->authed = 1;
      fs_msg w = { FS_MAGIC, M_WELCOME, 0, 0 };
      ok = send_fds(c->fd, &w, sizeof w, NULL, 0, MSG_DONTWAIT) == (ssize_t)sizeof w;
    }
  } else if (ok) {
    struct stat st;
    ok = n == sizeof buf.m && buf.m.type == M_SPAWN && nfds == 1 &&
         fstat(fds[0], &st) == 0 && S_ISSOCK(st.st_mode);
    if (ok) {
      if (spawn(fds[0])) {
        *channel = fds[0];
        child_cleanup(fds[0]);
        return 1;
      }
      return 0;
    }
  }
  if (!ok) {
    for (size_t k = 0; k < nfds; k++) close(fds[k]);
    drop_client(i);
  }
  return 0;
}

static void accept_clients(void) {
  for (;;) {
    int fd = accept4(srv.listen_fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (fd < 0) return;
    /* The directory is private already; the uid check keeps root's clients out too. */
    struct ucred cr;
    socklen_t len = sizeof cr;
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &len) != 0 || cr.uid != geteuid() ||
        grow((void **)&srv.clients, &srv.cap_clients, srv.nclients, sizeof(client)) != 0) {
      close(fd);
      continue;
    }
    srv.clients[srv.nclients++] = (client){ fd, 0 };
  }
}

int mp_fs_serve(int listen_fd, int lifeline, const mp_fs_addr *a, int *channel) {
  memset(&srv, 0, sizeof srv);
  srv.listen_fd = listen_fd;
  srv.lifeline = lifeline;
  server_signals();
  sigset_t waitmask = srv.mask;
  sigdelset(&waitmask, SIGCHLD);
  struct pollfd *pfd = NULL;
  size_t cap_pfd = 0;
  for (;;) {
    if (child_ended) reap();
    if (srv.lifeline < 0 && srv.nkids == 0) break;
    size_t need = srv.nclients + 2;
    if (grow((void **)&pfd, &cap_pfd, need - 1, sizeof *pfd) != 0) {
      /* No memory for the poll set: wait for children only, serve no one. */
      stop_listening(a);
      while (srv.nclients > 0) drop_client(0);
      sigsuspend(&waitmask);
      continue;
    }
    size_t n = 0, il = SIZE_MAX, is = SIZE_MAX;
    if (srv.lifeline >= 0) { il = n; pfd[n++] = (struct pollfd){ srv.lifeline, POLLIN, 0 }; }
    if (srv.listen_fd >= 0) { is = n; pfd[n++] = (struct pollfd){ srv.listen_fd, POLLIN, 0 }; }
    size_t first = n, nc = srv.nclients;
    for (size_t i = 0; i < nc; i++) pfd[n++] = (struct pollfd){ srv.clients[i].fd, POLLIN, 0 };
    if (ppoll(pfd, n, NULL, &waitmask) <= 0) continue;   /* EINTR: SIGCHLD, reaped at the top */
    if (il != SIZE_MAX && pfd[il].revents) {
      char b;
      /* The owner writes nothing: readable means end-of-file, the owner is gone. */
      if (read(srv.lifeline, &b, 1) <= 0) stop_listening(a);
    }
    if (is != SIZE_MAX && srv.listen_fd >= 0 && (pfd[is].revents & POLLIN)) accept_clients();
    /*
    ** Clients of this round from the last: dropping one moves the last of the
    ** array into its place, which is either done already or new this round.
    */
    for (size_t i = nc; i-- > 0;) {
      if (!(pfd[first + i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
      if (i >= srv.nclients || srv.clients[i].fd != pfd[first + i].fd) continue;
      if (serve_client(i, a, channel)) { free(pfd); return 0; }
    }
  }
  free(pfd);
  for (size_t i = 0; i < srv.nclients; i++) close(srv.clients[i].fd);
  _exit(0);
}

/* ---- The child's side ---------------------------------------------------------------- */

int mp_fs_read_request(int channel, char **payload, size_t *len, int **fds, size_t *nfds) {
  *payload = NULL;
  *fds = NULL;
  *nfds = 0;
  *len = 0;
  fs_request req;
  int err = read_full(channel, &req, sizeof req, NULL, nfds, 0);
  if (err) return err;
  if (req.magic != FS_MAGIC || req.type != M_REQUEST || req.nfds > MP_FS_MAXFDS ||
      req.length > SIZE_MAX / 2)
    return EPROTO;
  int *list = req.nfds ? malloc(req.nfds * sizeof(int)) : NULL;
  if (req.nfds && list == NULL) return ENOMEM;
  size_t got = 0;
  while (err == 0 && got < req.nfds) {
    fs_msg m;
    size_t before = got;
    err = read_full(channel, &m, sizeof m, list, &got, req.nfds);
    if (err == 0 && (m.magic != FS_MAGIC || m.type != M_FDS || m.n != got - before)) err = EPROTO;
  }
  char *data = NULL;
  if (err == 0) {
    data = malloc(req.length ? req.length : 1);
    if (data == NULL) err = ENOMEM;
    else err = read_full(channel, data, req.length, NULL, &got, got);
  }
  if (err) {
    for (size_t i = 0; i < got; i++) close(list[i]);
    free(list);
    free(data);
    return err == EPIPE ? EPIPE : err;
  }
  *payload = data;
  *len = req.length;
  *fds = list;
  *nfds = got;
  return 0;
}

/* ---- The client's side ---------------------------------------------------------------- */

int mp_fs_connect(const mp_fs_addr *a, int *conn) {
  *conn = -1;
  int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
  if (fd < 0) return errno;
  struct sockaddr_un sa = { .sun_family = AF_UNIX };
  memcpy(sa.sun_path, a->path, strlen(a->path) + 1);
  int err = 0;
  while (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
    if (errno == EINTR) continue;
    err = errno;
    break;
  }
  if (err == 0) {
    fs_hello h = { FS_MAGIC, M_HELLO, {0} };
    memcpy(h.key, a->key, MP_FS_KEYLEN);
    if (send_fds(fd, &h, sizeof h, NULL, 0, 0) != (ssize_t)sizeof h) err = ECONNREFUSED;
  }
  if (err == 0) {
    fs_msg w;
    err = wait_fd(fd, POLLIN, mp_now() + STALL, NULL);
    ssize_t n = err ? -1 : recv(fd, &w, sizeof w, MSG_DONTWAIT);
    /*
    ** A hang-up instead of WELCOME: the key was refused, or the server died
    ** between accept and reply. Our key is the server's own (we know it from
    ** its start), so it is the latter: the caller starts another.
    */
    if (err == 0 && n <= 0) err = ECONNREFUSED;
    else if (err == 0 && (n != (ssize_t)sizeof w || w.magic != FS_MAGIC || w.type != M_WELCOME))
      err = EPROTO;
  }
  if (err) {
    close(fd);
    return err == EPIPE || err == ECONNRESET ? ECONNREFUSED : err;
  }
  *conn = fd;
  return 0;
}

/* The client's end of one spawn: what is left to send, what came back. */
typedef struct spawn_io {
  int sock;
  const char *head;      /* the request header, then the fd batches */
  size_t head_len, head_off;
  const int *fds;
  size_t nfds, fds_sent;
  const char *payload;
  size_t len, off;
  pid_t pid;             /* 0 until the PID record came */
  int pidfd;
} spawn_io;

/* Sends what the socket takes now: 0, EAGAIN (full), or an errno. */
static int spawn_send(spawn_io *s) {
  while (s->head_off < s->head_len) {
    ssize_t n = send_fds(s->sock, s->head + s->head_off, s->head_len - s->head_off, NULL, 0, MSG_DONTWAIT);
    if (n < 0) return errno;
    s->head_off += (size_t)n;
  }
  while (s->fds_sent < s->nfds) {
    size_t k = s->nfds - s->fds_sent;
    if (k > FDS_PER_MSG) k = FDS_PER_MSG;
    fs_msg m = { FS_MAGIC, M_FDS, 0, (uint32_t)k };
    /* The record is 16 bytes into an empty-enough buffer: whole or not at all. */
    ssize_t n = send_fds(s->sock, &m, sizeof m, s->fds + s->fds_sent, k, MSG_DONTWAIT);
    if (n < 0) return errno;
    if (n != (ssize_t)sizeof m) return EPROTO;
    s->fds_sent += k;
  }
  while (s->off < s->len) {
    ssize_t n = send(s->sock, s->payload + s->off, s->len - s->off, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (n < 0) return errno;
    s->off += (size_t)n;
  }
  return 0;
}

/* Reads the PID (or ERROR) record: 0, EAGAIN, EPIPE, or the server's errno. */
static int spawn_recv(spawn_io *s) {
  fs_msg m;
  int fds[1];
  size_t nfds = 0;
  ssize_t n = recv_fds(s->sock, &m, sizeof m, fds, &nfds, 1, MSG_DONTWAIT | MSG_PEEK);
  if (n < 0) return errno == EWOULDBLOCK ? EAGAIN : errno;
  if (n == 0) return EPIPE;
  if (n < (ssize_t)sizeof m) return EAGAIN;     /* not whole yet */
  nfds = 0;
  n = recv_fds(s->sock, &m, sizeof m, fds, &nfds, 1, MSG_DONTWAIT);
  if (n != (ssize_t)sizeof m || m.magic != FS_MAGIC) {
    if (nfds) close(fds[0]);
    return EPROTO;
  }
  if (m.type == M_ERROR) return m.value > 0 ? m.value : EPROTO;
  if (m.type != M_PID || m.value <= 0) {
    if (nfds) close(fds[0]);
    return EPROTO;
  }
  s->pid = m.value;
  s->pidfd = nfds ? fds[0] : -1;
  return 0;
}

int mp_fs_spawn(int conn, const void *payload, size_t len, const int *fds, size_t nfds,
                pid_t *pid, int *status_fd, int *pidfd) {
  if (nfds > MP_FS_MAXFDS) return E2BIG;
  int sp[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sp) != 0) return errno;
  /* Our end only: the child reads its end blocking. */
  if (fcntl(sp[0], F_SETFL, O_NONBLOCK) != 0) { int err = errno; close(sp[0]); close(sp[1]); return err; }
  fs_msg req = { FS_MAGIC, M_SPAWN, 0, 0 };
  ssize_t n = send_fds(conn, &req, sizeof req, &sp[1], 1, 0);
  close(sp[1]);
  if (n != (ssize_t)sizeof req) {
    int err = n < 0 ? errno : EPROTO;
    close(sp[0]);
    return err == EPIPE || err == ECONNRESET || err == ENOTCONN ? EPIPE : err;
  }
  fs_request head = { FS_MAGIC, M_REQUEST, (uint32_t)nfds, 0, len };
  spawn_io s = { sp[0], (const char *)&head, sizeof head, 0, fds, nfds, 0, payload, len, 0, 0, -1 };
  /*
  ** Send the request and read the pid, in whatever order the socket allows:
  ** a large payload fills the buffer until the child reads it. Once the pid
  ** is in, anything readable means the child ended (its STATUS, left for the
  ** sentinel) or the server died: the rest of the payload has no reader.
  */
  int err = 0;
  double stall = mp_now() + STALL;
  for (;;) {
    int sent = spawn_send(&s);
    if (sent != 0 && sent != EAGAIN) { err = sent == EPIPE || sent == ECONNRESET ? EPIPE : sent; break; }
    if (s.pid == 0) {
      int rc = spawn_recv(&s);
      if (rc != 0 && rc != EAGAIN) { err = rc; break; }
    }
    int done = sent == 0;
    if (s.pid != 0 && done) break;
    short ev = (short)((done ? 0 : POLLOUT) | POLLIN);
    short rev = 0;
    int rc = wait_fd(s.sock, ev, stall, &rev);
    if (rc) { err = rc; break; }
    if (s.pid != 0 && (rev & (POLLIN | POLLHUP))) break;   /* ended (or server gone) early */
    stall = mp_now() + STALL;
  }
  if (err) {
    if (s.pidfd >= 0) close(s.pidfd);
    close(sp[0]);
    /* A child that was forked and lost its request ends on its own (EPIPE). */
    return err;
  }
  *pid = s.pid;
  *status_fd = sp[0];
  *pidfd = s.pidfd;
  return 0;
}

/*
** Peeks: the record stays in the socket, so the sentinel stays readable once
** the child has ended (as a pidfd does), whether or not the server has
** closed its end yet.
*/
int mp_fs_read_status(int status_fd, int *wstatus) {
  fs_msg m;
  ssize_t n;
  do n = recv(status_fd, &m, sizeof m, MSG_DONTWAIT | MSG_PEEK); while (n < 0 && errno == EINTR);
  if (n > 0 && n < (ssize_t)sizeof m) return EAGAIN;   /* not whole yet */
  if (n < 0) return errno == EAGAIN || errno == EWOULDBLOCK ? EAGAIN : EPIPE;
  if (n == sizeof m && m.magic == FS_MAGIC && m.type == M_STATUS) {
    *wstatus = m.value;
    return 0;
  }
  return EPIPE;   /* end-of-file (the server died) or not a status: the status is lost */
}
