/*
** The pool's local transport (see poolchan.h). Engine code: no Lua.
*/
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <linux/sockios.h>

#include "engine/clock.h"
#include "engine/fault.h"
#include "engine/poolchan.h"

/*
** The slot region: a header page, then one slot per worker. A slot is
** SLOT_SIZE bytes of MAP_SHARED memory (MAP_NORESERVE: pages cost nothing
** until touched): the control words, then the journal.
*/
#define HDR_SIZE 4096
#define SLOT_SIZE ((size_t)1 << 20)
#define SLOT_CTL 64
#define JCAP (SLOT_SIZE - SLOT_CTL - MP_PC_CHDR)

typedef struct region_hdr {
  uint32_t magic;                 /* MP_PC_MAGIC */
  uint32_t version;               /* MP_PC_VERSION */
  int32_t owner;                  /* the parent's pid */
  int32_t nslots;
  uint64_t slot_size;
} region_hdr;

static region_hdr *hdr_of(const mp_poolchan *c) { return (region_hdr *)c->region; }
static mp_pc_slot *slot_at(const mp_poolchan *c, int i) {
  return (mp_pc_slot *)(c->region + HDR_SIZE + (size_t)i * SLOT_SIZE);
}
/* The journal: a container header, then entries. */
static char *journal_of(mp_pc_slot *s) { return (char *)s + SLOT_CTL; }

int mp_pc_reserve(mp_pc_buf *b, size_t extra) {
  if (b->cap - b->len >= extra) return 0;
  size_t cap = b->cap ? b->cap : 4096;
  while (cap - b->len < extra) cap *= 2;
  char *p = realloc(b->data, cap);
  if (p == NULL) return ENOMEM;
  b->data = p;
  b->cap = cap;
  return 0;
}

void mp_pc_buf_free(mp_pc_buf *b) {
  free(b->data);
  b->data = NULL;
  b->len = b->cap = 0;
}

static void close_fd(int *fd) {
  if (*fd >= 0) { close(*fd); *fd = -1; }
}

static void release_maps(mp_poolchan *c) {
  for (int i = 0; i < MP_PC_RECV_BATCH; i++)
    if (c->maps[i] != NULL) { munmap(c->maps[i], c->maplens[i]); c->maps[i] = NULL; }
}

static void close_fds(int *fds, int *n) {
  for (int i = 0; i < *n; i++) close(fds[i]);
  *n = 0;
}

/* The stalled batch's fds (the transport's duplicates). */
static void drop_stall(mp_poolchan *c) {
  if (c->stall_fds != NULL) close_fds(c->stall_fds, &c->stall_nfds);
  free(c->stall_fds);
  c->stall_fds = NULL;
  c->stall_nfds = 0;
  c->stalled = 0;
}

/* ---- life ------------------------------------------------------------- */

void mp_poolchan_init(mp_poolchan *c) {
  memset(c, 0, sizeof *c);
  c->task_w = c->task_r = c->res_w = c->res_r = c->region_fd = -1;
}

void mp_poolchan_close(mp_poolchan *c) {
  close_fd(&c->task_w); close_fd(&c->task_r);
  close_fd(&c->res_w); close_fd(&c->res_r);
  release_maps(c);
  if (c->region != NULL) { munmap(c->region, c->region_len); c->region = NULL; }
  close_fd(&c->region_fd);
  free(c->sentinels); c->sentinels = NULL;    /* the sentinels belong to the Process objects */
  free(c->rbuf); c->rbuf = NULL;
  mp_pc_buf_free(&c->stall);
  drop_stall(c);
  close_fds(c->rfds, &c->nrfds);
  mp_pc_buf_free(&c->one);
}

static void grow_sndbuf(int fd) {
  int size = 1 << 20;    /* the kernel caps it at net.core.wmem_max */
  setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, sizeof size);
}

int mp_poolchan_open(mp_poolchan *c, int nslots) {
  int sv[2], rv[2];
  if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0) goto fail;
  c->task_w = sv[0]; c->task_r = sv[1];
  if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, rv) != 0) goto fail;
  c->res_r = rv[0]; c->res_w = rv[1];
  grow_sndbuf(c->task_w);
  grow_sndbuf(c->res_w);
  size_t len = HDR_SIZE + SLOT_SIZE * (size_t)nslots;
  /* A memfd (sparse, like anonymous shared memory) so that a fork-server worker can map it. */
  c->region_fd = memfd_create("mp-pool-slots", MFD_CLOEXEC);
  if (c->region_fd < 0 || ftruncate(c->region_fd, (off_t)len) != 0) goto fail;
  void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, c->region_fd, 0);
  if (p == MAP_FAILED) goto fail;
  c->region = p;
  c->region_len = len;
  c->nslots = nslots;
  region_hdr *h = hdr_of(c);
  h->magic = MP_PC_MAGIC;
  h->version = MP_PC_VERSION;
  h->owner = (int32_t)getpid();
  h->nslots = nslots;
  h->slot_size = SLOT_SIZE;
  c->sentinels = malloc(sizeof(int) * (size_t)nslots);
  if (c->sentinels == NULL) { errno = ENOMEM; goto fail; }
  for (int i = 0; i < nslots; i++) c->sentinels[i] = -1;
  return 0;
fail:;
  int err = errno;
  mp_poolchan_close(c);     /* at once, not at the binding's next collection */
  return err;
}

void mp_poolchan_after_fork(mp_poolchan *c, int worker) {
  close_fd(&c->task_w);
  close_fd(&c->res_r);
  free(c->sentinels); c->sentinels = NULL;
  mp_pc_buf_free(&c->stall);
  drop_stall(c);
  close_fds(c->rfds, &c->nrfds);              /* a worker's child keeps no task's fds */
  close_fd(&c->region_fd);                    /* the mapping is inherited */
  if (!worker) {
    close_fd(&c->task_r);
    close_fd(&c->res_w);
  }
}

int mp_poolchan_worker_ends(const mp_poolchan *c, int fds[3], size_t *region_len) {
  if (c->task_r < 0 || c->res_w < 0 || c->region_fd < 0 || c->region == NULL) return EBADF;
  fds[0] = c->task_r;
  fds[1] = c->res_w;
  fds[2] = c->region_fd;
  *region_len = c->region_len;
  return 0;
}

int mp_poolchan_attach(mp_poolchan *c, int task_r, int res_w, int region_fd, size_t region_len, int nslots) {
  mp_poolchan_init(c);
  c->task_r = task_r;
  c->res_w = res_w;
  c->region_fd = region_fd;
  struct stat st;
  int err = EINVAL;
  if (nslots < 1 || region_len != HDR_SIZE + SLOT_SIZE * (size_t)nslots ||
      fstat(region_fd, &st) != 0 || !S_ISREG(st.st_mode) || (uint64_t)st.st_size < region_len)
    goto fail;
  void *p = mmap(NULL, region_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, region_fd, 0);
  if (p == MAP_FAILED) { err = errno; goto fail; }
  c->region = p;
  c->region_len = region_len;
  c->nslots = nslots;
  region_hdr *h = hdr_of(c);
  if (h->magic != MP_PC_MAGIC || h->version != MP_PC_VERSION || h->nslots != nslots ||
      h->slot_size != SLOT_SIZE)
    goto fail;
  return 0;
fail:
  mp_poolchan_close(c);
  return err;
}

void mp_poolchan_close_tasks(mp_poolchan *c) { close_fd(&c->task_w); }

int mp_poolchan_fd(const mp_poolchan *c) { return c->res_r; }

/* ---- messages --------------------------------------------------------- */

/* A control buffer for SCM_RIGHTS: a big message's memfd and a batch's fds. */
typedef union { struct cmsghdr h; char b[CMSG_SPACE(sizeof(int) * (MP_PC_MAXFDS + 1))]; } fd_ctl;

/* sendmsg of len bytes with mfd (unless -1) then fds[0..nfds) passed along. */
static int send_fds(int fd, const char *data, size_t len, int mfd, const int *fds, int nfds, int flags) {
  struct iovec iov = { (void *)data, len };
  fd_ctl ctl;
  struct msghdr m = { .msg_iov = &iov, .msg_iovlen = 1 };
  int all = nfds + (mfd >= 0);
  if (all > 0) {
    memset(&ctl, 0, sizeof ctl);
    m.msg_control = ctl.b;
    m.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)all);
    struct cmsghdr *cm = CMSG_FIRSTHDR(&m);
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_RIGHTS;
    cm->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)all);
    char *p = (char *)CMSG_DATA(cm);
    if (mfd >= 0) { memcpy(p, &mfd, sizeof(int)); p += sizeof(int); }
    if (nfds > 0) memcpy(p, fds, sizeof(int) * (size_t)nfds);
  }
  while (sendmsg(fd, &m, flags) < 0)
    if (errno != EINTR) return errno;
  return 0;
}

/*
** Sends one message with the fds of the mp objects it carries (nfds at most
** MP_PC_MAXFDS): 0, EAGAIN when non-blocking and full, or an errno. A big one
** goes in a memfd, handed to the caller in *keep when keep is not NULL (the
** worker maps the same pages: the caller keeps the bytes at no cost); the
** memfd is the first fd passed, the objects' follow.
*/
static int send_msg(int fd, const char *data, size_t len, const int *fds, int nfds, int nonblock, int *keep) {
  int flags = MSG_NOSIGNAL | (nonblock ? MSG_DONTWAIT : 0);
  if (len <= MP_PC_SMALL) {
    if (nfds > 0) return send_fds(fd, data, len, -1, fds, nfds, flags);
    for (;;) {
      if (send(fd, data, len, flags) >= 0) return 0;
      if (errno != EINTR) return errno;
    }
  }
  int mfd = memfd_create("mp-pool", MFD_CLOEXEC);
  if (mfd < 0) return errno;
  for (size_t off = 0; off < len; ) {
    ssize_t n = write(mfd, data + off, len - off);
    if (n < 0) {
      if (errno == EINTR) continue;
      int err = errno;
      close(mfd);
      return err;
    }
    off += (size_t)n;
  }
  char small[16] = { 'B' };
  mp_pc_put64(small + 8, (uint64_t)len);
  int err = send_fds(fd, small, sizeof small, mfd, fds, nfds, flags);
  if (err == 0 && keep != NULL) *keep = mfd;
  else close(mfd);      /* the receiver holds its own copy once sent */
  return err;
}

/*
** The fds passed with a message, in order, into out[0..max) (the rest, and
** all of them when the kernel cut the list short, are closed): their count,
** or -1 when cut short (MSG_CTRUNC: the message lost fds it should have had).
*/
static int passed_fds(struct msghdr *m, int *out, int max) {
  int n = 0, cut = (m->msg_flags & MSG_CTRUNC) != 0;
  for (struct cmsghdr *cm = CMSG_FIRSTHDR(m); cm != NULL; cm = CMSG_NXTHDR(m, cm)) {
    if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS) continue;
    int k = (int)((cm->cmsg_len - CMSG_LEN(0)) / sizeof(int));
    for (int i = 0; i < k; i++) {
      int f;
      memcpy(&f, CMSG_DATA(cm) + i * sizeof(int), sizeof(int));
      if (n < max && !cut) out[n++] = f; else { close(f); cut = 1; }
    }
  }
  if (cut) { close_fds(out, &n); return -1; }
  return n;
}

/* The first fd passed with a message (others closed), or -1. */
static int passed_fd(struct msghdr *m) {
  int fds[MP_PC_MAXFDS + 1];
  int n = passed_fds(m, fds, MP_PC_MAXFDS + 1);
  for (int i = 1; i < n; i++) close(fds[i]);
  return n > 0 ? fds[0] : -1;
}

/* Resolves a received message; a big one is mapped (into *map, unmapped by the caller). */
static int open_msg(struct msghdr *m, int fd, char *buf, size_t n, mp_pc_msg *out, void **map, size_t *maplen) {
  if (n == 16 && buf[0] == 'B' && fd >= 0) {
    size_t big = (size_t)mp_pc_get64(buf + 8);
    struct stat st;
    if (fstat(fd, &st) != 0 || (size_t)st.st_size < big || big == 0) { close(fd); return EPROTO; }
    void *p = mmap(NULL, big, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (p == MAP_FAILED) return errno;
    *map = p;
    *maplen = big;
    out->data = p;
    out->len = big;
    return 0;
  }
  if (fd >= 0) close(fd);
  if ((m->msg_flags & MSG_TRUNC) || n < MP_PC_CHDR) return EPROTO;
  out->data = buf;
  out->len = n;
  return 0;
}

/* ---- parent ----------------------------------------------------------- */

static int pc_flush(void *t) {
  mp_poolchan *c = t;
  if (!c->stalled) return 0;
  if (c->task_w < 0) return EPIPE;
  int err = send_msg(c->task_w, c->stall.data, c->stall.len, c->stall_fds, c->stall_nfds, 1, NULL);
  if (err == EWOULDBLOCK) err = EAGAIN;
  if (err == 0) drop_stall(c);       /* the receiver holds its copies of the fds */
  return err;
}

/*
** A batch the socket has no room for is copied and kept, with duplicates of
** its fds (the caller may close its own before this one leaves); flush sends it.
*/
static int pc_send(void *t, const char *batch, size_t len, const int *fds, int nfds, int *keep) {
  mp_poolchan *c = t;
  *keep = -1;
  if (c->task_w < 0) return EPIPE;
  if (c->stalled) return EAGAIN;
  if (nfds < 0 || nfds > MP_PC_MAXFDS) return EINVAL;
  int err = send_msg(c->task_w, batch, len, fds, nfds, 1, keep);
  if (err == EWOULDBLOCK) err = EAGAIN;
  if (err != EAGAIN) return err;
  c->stall.len = 0;
  if (mp_pc_reserve(&c->stall, len) != 0) return ENOMEM;
  if (nfds > 0 && (c->stall_fds = malloc(sizeof(int) * (size_t)nfds)) == NULL) return ENOMEM;
  for (int i = 0; i < nfds; i++) {
    int d = fcntl(fds[i], F_DUPFD_CLOEXEC, 3);
    if (d < 0) { err = errno; drop_stall(c); return err; }
    c->stall_fds[c->stall_nfds++] = d;
  }
  memcpy(c->stall.data, batch, len);
  c->stall.len = len;
  c->stalled = 1;
  return 0;            /* kept: it is the transport's now */
}

/*
** The result messages available now (non-blocking). Their data stays valid
** until the next call: big ones stay mapped until then.
*/
static int pc_recv(void *t, mp_pc_msg *out, int max, int *count) {
  mp_poolchan *c = t;
  *count = 0;
  release_maps(c);
  if (max > MP_PC_RECV_BATCH) max = MP_PC_RECV_BATCH;
  if (c->rbuf == NULL && (c->rbuf = malloc((size_t)MP_PC_RECV_BATCH * MP_PC_SMALL)) == NULL) return ENOMEM;
  struct mmsghdr mm[MP_PC_RECV_BATCH];
  struct iovec iov[MP_PC_RECV_BATCH];
  union { struct cmsghdr h; char b[CMSG_SPACE(sizeof(int) * 4)]; } ctl[MP_PC_RECV_BATCH];
  memset(mm, 0, sizeof mm);
  for (int i = 0; i < max; i++) {
    iov[i].iov_base = c->rbuf + (size_t)i * MP_PC_SMALL;
    iov[i].iov_len = MP_PC_SMALL;
    mm[i].msg_hdr.msg_iov = &iov[i];
    mm[i].msg_hdr.msg_iovlen = 1;
    mm[i].msg_hdr.msg_control = ctl[i].b;
    mm[i].msg_hdr.msg_controllen = sizeof ctl[i].b;
  }
  int n;
  while ((n = recvmmsg(c->res_r, mm, (unsigned)max, MSG_DONTWAIT | MSG_CMSG_CLOEXEC, NULL)) < 0) {
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
    return errno;
  }
  /* Every passed memfd is opened (and closed) here, before the caller's code runs. */
  int bad = 0;
  for (int i = 0; i < n; i++) {
    int err = open_msg(&mm[i].msg_hdr, passed_fd(&mm[i].msg_hdr), iov[i].iov_base, mm[i].msg_len, &out[*count],
                       &c->maps[i], &c->maplens[i]);
    if (err) bad = err; else (*count)++;
  }
  return bad;
}

static int pc_wait(void *t, double deadline, int *lost) {
  mp_poolchan *c = t;
  struct pollfd fds[2 + 4096];
  int nf = 0;
  fds[nf++] = (struct pollfd){ .fd = c->res_r, .events = POLLIN };
  if (c->stalled && c->task_w >= 0) fds[nf++] = (struct pollfd){ .fd = c->task_w, .events = POLLOUT };
  int first = nf;
  for (int i = 0; i < c->nslots && nf < (int)(sizeof fds / sizeof fds[0]); i++)
    if (c->sentinels[i] >= 0) fds[nf++] = (struct pollfd){ .fd = c->sentinels[i], .events = POLLIN };
  double now = mp_now();
  if (now >= deadline) return ETIMEDOUT;
  int sliced;
  double until = mp_slice_end(deadline, &sliced);
  int ms = (int)((until - now) * 1000.0 + 0.999);
  int r = poll(fds, (nfds_t)nf, ms);
  if (r < 0) return errno;
  if (r == 0) return sliced ? EINTR : ETIMEDOUT;
  for (int i = first; i < nf; i++)
    if (fds[i].revents) *lost = 1;
  return 0;
}

static void pc_started(void *t, int index, int sentinel) {
  mp_poolchan *c = t;
  c->sentinels[index] = sentinel;
}

/*
** What the dead worker in slot index held; clears the slot for a successor.
** The journal stays readable until a successor writes it.
*/
static void pc_lost(void *t, int index, mp_pc_held *h) {
  mp_poolchan *c = t;
  mp_pc_slot *s = slot_at(c, index);
  c->sentinels[index] = -1;
  h->task = atomic_load(&s->task);
  h->batch_first = atomic_load(&s->batch_first);
  h->batch_count = atomic_load(&s->batch_count);
  h->taking = atomic_load(&s->taking) != 0;
  uint32_t used = atomic_load(&s->committed);
  if (used > JCAP) used = 0;
  char *j = journal_of(s);
  memset(j, 0, MP_PC_CHDR);
  j[0] = 'K';
  h->journal = j;
  h->journal_len = MP_PC_CHDR + used;
  atomic_store(&s->taking, 0);
  atomic_store(&s->task, 0);
  atomic_store(&s->batch_first, 0);
  atomic_store(&s->batch_count, 0);
  atomic_store(&s->committed, 0);
}

/*
** Every batch sent has been taken: nothing kept in the parent, nothing left
** in the socket (for AF_UNIX, SIOCOUTQ counts the bytes not yet received).
*/
static int pc_idle(void *t) {
  mp_poolchan *c = t;
  int queued = 0;
  if (c->task_w >= 0 && ioctl(c->task_w, SIOCOUTQ, &queued) != 0) queued = 1;
  return !c->stalled && queued == 0;
}

static int pc_busy(void *t, int index) {
  mp_pc_slot *s = slot_at(t, index);
  return atomic_load(&s->taking) != 0 || atomic_load(&s->batch_count) != 0 || atomic_load(&s->task) != 0;
}

static uint64_t pc_running(void *t, int index) {
  return atomic_load(&slot_at(t, index)->task);
}

/* ---- worker ----------------------------------------------------------- */

/*
** The next batch, named in the worker's slot. A worker never sleeps inside
** recvmsg: woken by a message, it would take it before dying of a SIGKILL sent
** meanwhile (the kernel finishes the call first) and nobody's slot would name
** it. It sleeps in poll and takes the message only while running, with the
** slot's `taking` flag raised from before recvmsg until the batch is named: a
** batch that left the socket is always held by a slot that says so, and a
** worker delayed there is never idle to the parent.
*/
static int pc_take(void *t, int index, const char **data, size_t *len, const int **fds, int *nfds) {
  mp_poolchan *c = t;
  mp_pc_slot *s = slot_at(c, index);
  if (hdr_of(c)->magic != MP_PC_MAGIC || hdr_of(c)->version != MP_PC_VERSION) return EPROTO;
  release_maps(c);
  close_fds(c->rfds, &c->nrfds);     /* the previous batch's (decoded objects hold their own) */
  if (c->rbuf == NULL && (c->rbuf = malloc(MP_PC_SMALL)) == NULL) return ENOMEM;
  for (;;) {
    atomic_store(&s->taking, 1);
    struct iovec iov = { c->rbuf, MP_PC_SMALL };
    fd_ctl ctl;
    struct msghdr m = { .msg_iov = &iov, .msg_iovlen = 1,
                        .msg_control = ctl.b, .msg_controllen = sizeof ctl.b };
    ssize_t n = recvmsg(c->task_r, &m, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
    if (n < 0) {
      atomic_store(&s->taking, 0);
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        struct pollfd pfd = { .fd = c->task_r, .events = POLLIN };
        if (poll(&pfd, 1, -1) < 0 && errno == EINTR) return EINTR;
        continue;
      }
      return errno;
    }
    if (n == 0) { atomic_store(&s->taking, 0); return EPIPE; }
    MP_FAULT("pool_take");       /* test builds: stall (or die) between taking and naming */
    /* A big message's memfd comes first, then the fds of the batch's mp objects. */
    int all[MP_PC_MAXFDS + 1];
    int na = passed_fds(&m, all, MP_PC_MAXFDS + 1), big = n == 16 && c->rbuf[0] == 'B';
    mp_pc_msg msg;
    int err = na < 0 ? EPROTO : open_msg(&m, big && na > 0 ? all[0] : -1, c->rbuf, (size_t)n, &msg,
                                         &c->maps[0], &c->maplens[0]);
    for (int i = big && na > 0 ? 1 : 0; i < na; i++) c->rfds[c->nrfds++] = all[i];
    if (err == 0 && msg.data[0] != 'K') err = EPROTO;
    if (err) { atomic_store(&s->taking, 0); close_fds(c->rfds, &c->nrfds); return err; }
    atomic_store(&s->batch_first, mp_pc_get64(msg.data + 8));
    atomic_store(&s->batch_count, mp_pc_get32(msg.data + 4));
    atomic_store(&s->taking, 0);
    *data = msg.data;
    *len = msg.len;
    *fds = c->rfds;
    *nfds = c->nrfds;
    return 0;
  }
}

static void pc_begin(void *t, int index, uint64_t id) {
  atomic_store(&slot_at(t, index)->task, id);
}

static int send_all(mp_poolchan *c, const char *p, size_t len) {
  return send_msg(c->res_w, p, len, NULL, 0, 0, NULL);
}

/* Sends the journal's finished results as one container and empties it. */
static int flush_journal(mp_poolchan *c, mp_pc_slot *s) {
  uint32_t used = atomic_load_explicit(&s->committed, memory_order_relaxed);
  if (used == 0) return 0;
  char *j = journal_of(s);
  memset(j, 0, MP_PC_CHDR);
  j[0] = 'K';
  mp_pc_put32(j + 4, c->jn);
  int err = send_all(c, j, MP_PC_CHDR + used);
  if (err) return err;
  atomic_store(&s->committed, 0);
  c->jn = 0;
  return 0;
}

/*
** Records a finished result in the journal (flushing it first when full), or
** sends it alone when it is larger than the journal. Either way the result
** is safe before the worker starts its next task.
*/
static int pc_keep(void *t, int index, const char *r, size_t len) {
  mp_poolchan *c = t;
  mp_pc_slot *s = slot_at(c, index);
  uint32_t used = atomic_load_explicit(&s->committed, memory_order_relaxed);
  int err;
  if (used + 4 + len > JCAP) {
    if ((err = flush_journal(c, s)) != 0) return err;
    used = 0;
  }
  if (4 + len > JCAP) {
    mp_pc_buf *b = &c->one;
    b->len = 0;
    if (mp_pc_reserve(b, MP_PC_CHDR + 4 + len) != 0) return ENOMEM;
    memset(b->data, 0, MP_PC_CHDR);
    b->data[0] = 'K';
    mp_pc_put32(b->data + 4, 1);
    mp_pc_put32(b->data + MP_PC_CHDR, (uint32_t)len);
    memcpy(b->data + MP_PC_CHDR + 4, r, len);
    return send_all(c, b->data, MP_PC_CHDR + 4 + len);
  }
  char *j = journal_of(s) + MP_PC_CHDR + used;
  mp_pc_put32(j, (uint32_t)len);
  memcpy(j + 4, r, len);
  /* Published after the bytes: a parent reading a dead worker's journal sees whole entries. */
  atomic_store_explicit(&s->committed, used + 4 + (uint32_t)len, memory_order_release);
  c->jn++;
  return 0;
}

static int pc_end(void *t, int index) {
  mp_poolchan *c = t;
  mp_pc_slot *s = slot_at(c, index);
  int err = flush_journal(c, s);
  atomic_store(&s->batch_count, 0);
  return err;
}

static void pc_close_tasks(void *t) { mp_poolchan_close_tasks(t); }
static int pc_fd(void *t) { return mp_poolchan_fd(t); }
static void pc_after_fork(void *t, int worker) { mp_poolchan_after_fork(t, worker); }
static void pc_close(void *t) { mp_poolchan_close(t); }

const mp_pool_transport_ops mp_poolchan_ops = {
  .magic = MP_POOL_OPS_MAGIC, .version = MP_POOL_OPS_VERSION, .name = "local", .fds = MP_PC_MAXFDS,
  .send = pc_send, .flush = pc_flush, .recv = pc_recv, .wait = pc_wait,
  .started = pc_started, .lost = pc_lost, .idle = pc_idle, .busy = pc_busy,
  .running = pc_running, .take = pc_take, .begin = pc_begin, .keep = pc_keep,
  .end = pc_end, .close_tasks = pc_close_tasks, .fd = pc_fd,
  .after_fork = pc_after_fork, .close = pc_close,
};
