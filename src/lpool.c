/*
** The pool's channel: how tasks reach the workers and results come back, and
** the loop a worker runs. The orchestration (jobs, chunking, AsyncResult,
** replacement of workers) is Lua, in lua/mp/pool.lua; what happens per item is
** here, so that no Lua-level round trip is paid per item.
**
** Transport. Two AF_UNIX SOCK_SEQPACKET socket pairs: the parent writes task
** messages into one that every worker reads, and every worker writes result
** messages into one that the parent reads. The kernel keeps message boundaries
** and hands each message whole to exactly one reader, which gives what a pool
** needs and a hand-made ring does not: workers pull tasks from a shared queue
** (idle workers take the next chunk), and a worker killed at any instant never
** leaves half a message or a held lock behind. Messages above SMALL_MAX travel
** in a memfd passed with SCM_RIGHTS, so any size passes and the socket buffers
** stay small.
**
** Death of a worker. Each worker has a slot in a small MAP_SHARED region
** holding the id of the task it is running (0 when idle). When the parent sees
** a worker's sentinel, it first drains the result socket, then fails the task
** still named in the slot with WorkerLostError.
**
** Wire format (native byte order; both ends are forks of one binary):
**   task:   u8 kind ('M' map, 'S' starmap, 'A' apply), pad, u32 fn_id,
**           u64 task_id, u32 fn_len, u32 count, fn bytes, groups
**   result: u8 kind ('R' values, 'E' task error, 'I' initializer error), pad,
**           u64 task_id, u32 count, pad, groups
**   group:  u32 bytes, u32 values, one serializer message holding those values
**   big:    u8 'B', pad, u64 length; the message itself is in the passed memfd
** Values travel in groups of up to GROUP so that the serializer's per-message
** cost is amortized and a chunk of any length never needs more Lua stack.
*/
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>
#include <linux/sockios.h>

#include "mp_aux.h"
#include "serial.h"
#include "engine/clock.h"
#include "engine/fault.h"
#include "engine/identity.h"

#define CHAN_T "mp.PoolChannel"
#define SMALL_MAX (32 * 1024)
#define GROUP 256
#define RECV_BATCH 16
#define HDR 24
#define FN_CACHE_MAX 256
#define POOL_RING 65536          /* size of the records ring in pool.lua */

/*
** Each worker's slot: SLOT_SIZE bytes of MAP_SHARED memory (MAP_NORESERVE:
** pages cost nothing until touched). The control words say which task the
** worker runs and which batch it took; the journal holds the results of the
** batch's finished tasks until they are sent, so that the parent recovers them
** if the worker dies before sending.
*/
#define SLOT_SIZE ((size_t)1 << 20)
#define SLOT_CTL 64
#define CHDR 16                  /* container header: u8 'K', pad, u32 n, u64 first id */
#define JCAP (SLOT_SIZE - SLOT_CTL - CHDR)

typedef struct pool_slot {
  _Atomic uint64_t task;         /* the task the worker runs, 0 between tasks */
  _Atomic uint64_t batch_first;  /* the batch it took: ids first .. first+count-1 */
  _Atomic uint32_t batch_count;
  _Atomic uint32_t committed;    /* journal bytes holding finished results */
  _Atomic uint32_t taking;       /* 1 from before recvmsg until the batch is named */
} pool_slot;

typedef struct pbuf {
  char *data;
  size_t len, cap;
} pbuf;

typedef struct chan {
  const mp_class *cls;
  int foreign;                /* a forked child's copy: the parent-side ends are closed */
  int task_w, task_r;         /* tasks: the parent writes task_w, workers read task_r */
  int res_w, res_r;           /* results: workers write res_w, the parent reads res_r */
  int nslots;
  char *slots;                /* MAP_SHARED, nslots * SLOT_SIZE bytes */
  uint32_t batch_n;           /* parent: tasks in the batch being built in out */
  uint32_t batch_fn;          /* parent: the function id of the batch's last task */
  int *pidfds;                /* parent: each slot's worker sentinel, -1 when none */
  pbuf out;                   /* the message being built */
  pbuf stall;                 /* a task message the socket had no room for yet */
  int stalled;
  char *rbuf;                 /* RECV_BATCH receive areas of SMALL_MAX bytes */
  void *map;                  /* a big message being read, unmapped on the next call */
  size_t maplen;
} chan;

static const mp_class CHAN_C = { CHAN_T, sizeof(chan), NULL };

static pool_slot *slot_at(chan *c, int i) { return (pool_slot *)(c->slots + (size_t)i * SLOT_SIZE); }
/* The journal's container header, followed by entries (u32 length, message). */
static char *journal_of(pool_slot *s) { return (char *)s + SLOT_CTL; }

static void close_fd(int *fd) {
  if (*fd >= 0) { close(*fd); *fd = -1; }
}

static void release_map(chan *c) {
  if (c->map != NULL) { munmap(c->map, c->maplen); c->map = NULL; }
}

static chan *checkchan(lua_State *L) {
  chan *c = mp_checkself(L, 1, &CHAN_C);
  if (c->slots == NULL) luaL_error(L, "pool channel is closed");
  return c;
}

/* Parent-only operations: a worker's inherited copy must not touch them. */
static chan *checkowner(lua_State *L) {
  chan *c = checkchan(L);
  if (c->foreign) luaL_error(L, "pool used from a process that did not create it");
  return c;
}

/* ---- buffers ---------------------------------------------------------- */

static char *pbuf_reserve(lua_State *L, pbuf *b, size_t extra) {
  if (b->cap - b->len < extra) {
    size_t cap = b->cap ? b->cap : 4096;
    while (cap - b->len < extra) cap *= 2;
    char *p = realloc(b->data, cap);
    if (p == NULL) luaL_error(L, "not enough memory");
    b->data = p;
    b->cap = cap;
  }
  return b->data + b->len;
}

static void pbuf_add(lua_State *L, pbuf *b, const void *p, size_t n) {
  memcpy(pbuf_reserve(L, b, n), p, n);
  b->len += n;
}

static void pbuf_free(pbuf *b) {
  free(b->data);
  b->data = NULL;
  b->len = b->cap = 0;
}

static void put_u32(char *p, uint32_t v) { memcpy(p, &v, 4); }
static void put_u64(char *p, uint64_t v) { memcpy(p, &v, 8); }
static uint32_t get_u32(const char *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static uint64_t get_u64(const char *p) { uint64_t v; memcpy(&v, p, 8); return v; }

static void header(lua_State *L, pbuf *b, char kind, uint32_t a, uint64_t id, uint32_t x, uint32_t y) {
  b->len = 0;
  char *p = pbuf_reserve(L, b, HDR);
  memset(p, 0, HDR);
  p[0] = kind;
  put_u32(p + 4, a);
  put_u64(p + 8, id);
  put_u32(p + 16, x);
  put_u32(p + 20, y);
  b->len = HDR;
}

/*
** Encodes the n values at idx.. as one group appended to b. The serializer
** writes into the state's scratch buffer, copied at once: a task may itself use
** a queue (and the scratch buffer) between two groups.
*/
static void add_group(lua_State *L, pbuf *b, int idx, int n) {
  mp_wbuf *s = mp_serial_scratch(L);
  mp_serial_encode(L, idx, n, s, n == 1 ? "item" : "items");
  char *p = pbuf_reserve(L, b, 8 + s->len);
  put_u32(p, (uint32_t)s->len);
  put_u32(p + 4, (uint32_t)n);
  memcpy(p + 8, s->data, s->len);
  b->len += 8 + s->len;
}

/*
** The serializer runs under lua_pcall so that a value that cannot be sent
** fails its task only. But a hook (lua.c's Ctrl-C, an mp.signal handler) may
** fire at the call or return of the protected function and raise there: such
** an error is not the codec's and must propagate. `state` tells them apart:
** 1 while the codec runs, so any other failure is raised again.
*/
typedef struct codec_call {
  pbuf *b;
  const char *p;
  size_t len;
  int state;
} codec_call;

/* Re-raises the error on top unless the codec itself raised it. */
static int codec_status(lua_State *L, codec_call *cc, int status) {
  if (status != LUA_OK && cc->state != 1) lua_error(L);
  return status;
}

/* lua_pcall'd: encodes its arguments 2.. as a group into cc->b. */
static int encode_values(lua_State *L) {
  codec_call *cc = lua_touserdata(L, 1);
  cc->state = 1;
  add_group(L, cc->b, 2, lua_gettop(L) - 1);
  cc->state = 2;
  return 0;
}

/* Encodes (and pops) the n values at idx..top as a group, in protected mode. */
static int protected_group(lua_State *L, pbuf *b, int idx) {
  codec_call cc = { b, NULL, 0, 0 };
  int n = lua_gettop(L) - idx + 1;
  lua_pushcfunction(L, encode_values);
  lua_insert(L, idx);
  lua_pushlightuserdata(L, &cc);
  lua_insert(L, idx + 1);
  return codec_status(L, &cc, lua_pcall(L, n + 1, 0, 0));
}

/* lua_pcall'd: decodes the message cc->p, cc->len. */
static int decode_values(lua_State *L) {
  codec_call *cc = lua_touserdata(L, 1);
  lua_settop(L, 0);
  cc->state = 1;
  int n = mp_serial_decode(L, cc->p, cc->len);
  cc->state = 2;
  return n;
}

/* Pushes the values of one serialized message; on error pushes the message. */
static int protected_decode(lua_State *L, const char *p, size_t len) {
  codec_call cc = { NULL, p, len, 0 };
  lua_pushcfunction(L, decode_values);
  lua_pushlightuserdata(L, &cc);
  return codec_status(L, &cc, lua_pcall(L, 1, LUA_MULTRET, 0));
}

/* ---- messages --------------------------------------------------------- */

/*
** Sends one message. Returns 0, EAGAIN when a non-blocking send found no room,
** or an errno. Big messages go through a memfd.
*/
static int send_msg(int fd, const char *data, size_t len, int nonblock) {
  int flags = MSG_NOSIGNAL | (nonblock ? MSG_DONTWAIT : 0);
  if (len <= SMALL_MAX) {
    for (;;) {
      ssize_t n = send(fd, data, len, flags);
      if (n >= 0) return 0;
      if (errno != EINTR) return errno;
    }
  }
  int mfd = memfd_create("mp-pool", MFD_CLOEXEC);
  if (mfd < 0) return errno;
  size_t off = 0;
  while (off < len) {
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
  put_u64(small + 8, (uint64_t)len);
  struct iovec iov = { small, sizeof small };
  union { struct cmsghdr h; char b[CMSG_SPACE(sizeof(int))]; } ctl;
  memset(&ctl, 0, sizeof ctl);
  struct msghdr m = { .msg_iov = &iov, .msg_iovlen = 1,
                      .msg_control = ctl.b, .msg_controllen = sizeof ctl.b };
  struct cmsghdr *cm = CMSG_FIRSTHDR(&m);
  cm->cmsg_level = SOL_SOCKET;
  cm->cmsg_type = SCM_RIGHTS;
  cm->cmsg_len = CMSG_LEN(sizeof(int));
  memcpy(CMSG_DATA(cm), &mfd, sizeof(int));
  int err = 0;
  while (sendmsg(fd, &m, flags) < 0) {
    if (errno != EINTR) { err = errno; break; }
  }
  close(mfd);
  return err;
}

/* The fd passed with a received message, or -1. */
static int passed_fd(struct msghdr *m) {
  int fd = -1;
  for (struct cmsghdr *cm = CMSG_FIRSTHDR(m); cm != NULL; cm = CMSG_NXTHDR(m, cm)) {
    if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_RIGHTS) {
      int n = (int)((cm->cmsg_len - CMSG_LEN(0)) / sizeof(int));
      for (int i = 0; i < n; i++) {
        int f;
        memcpy(&f, CMSG_DATA(cm) + i * sizeof(int), sizeof(int));
        if (fd < 0) fd = f; else close(f);
      }
    }
  }
  return fd;
}

/*
** Resolves a received message: a big one is mapped from its memfd (unmapped on
** the next release_map). Returns 0 or an errno; data and len give the message.
*/
static int open_msg(chan *c, struct msghdr *m, char *buf, size_t n, const char **data, size_t *len) {
  int fd = passed_fd(m);
  if (n == 16 && buf[0] == 'B' && fd >= 0) {
    size_t big = (size_t)get_u64(buf + 8);
    struct stat st;
    if (fstat(fd, &st) != 0 || (size_t)st.st_size < big || big == 0) { close(fd); return EPROTO; }
    void *p = mmap(NULL, big, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (p == MAP_FAILED) return errno;
    c->map = p;
    c->maplen = big;
    *data = p;
    *len = big;
    return 0;
  }
  if (fd >= 0) close(fd);
  if ((m->msg_flags & MSG_TRUNC) || n < HDR) return EPROTO;
  *data = buf;
  *len = n;
  return 0;
}

/* ---- construction ----------------------------------------------------- */

static void chan_release(chan *c) {
  close_fd(&c->task_w); close_fd(&c->task_r);
  close_fd(&c->res_w); close_fd(&c->res_r);
  release_map(c);
  if (c->slots != NULL) {
    munmap(c->slots, SLOT_SIZE * (size_t)c->nslots);
    c->slots = NULL;
  }
  free(c->pidfds); c->pidfds = NULL;   /* the sentinels belong to the Process objects */
  free(c->rbuf); c->rbuf = NULL;
  pbuf_free(&c->out);
  pbuf_free(&c->stall);
}

static int chan_close(lua_State *L) {
  chan_release(mp_checkself(L, 1, &CHAN_C));
  return 0;
}

static void grow_sndbuf(int fd) {
  int size = 1 << 20;    /* the kernel caps it at net.core.wmem_max */
  setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, sizeof size);
}

/* core.pool_channel(nworkers) */
static int core_pool_channel(lua_State *L) {
  lua_Integer n = luaL_checkinteger(L, 1);
  luaL_argcheck(L, n >= 1 && n <= 4096, 1, "number of workers out of range");
  chan *c = mp_newself(L, &CHAN_C, 0);
  c->task_w = c->task_r = c->res_w = c->res_r = -1;   /* safe empty state */
  /* A failure releases what was made at once, not at the next collection. */
  int sv[2], rv[2], err = 0;
  const char *what = "pool: socketpair";
  if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0) goto fail;
  c->task_w = sv[0]; c->task_r = sv[1];
  if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, rv) != 0) goto fail;
  c->res_r = rv[0]; c->res_w = rv[1];
  grow_sndbuf(c->task_w);
  grow_sndbuf(c->res_w);
  size_t len = SLOT_SIZE * (size_t)n;
  what = "pool: mmap";
  void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) goto fail;
  c->slots = p;
  c->nslots = (int)n;
  what = "pool";
  c->pidfds = malloc(sizeof(int) * (size_t)n);
  if (c->pidfds == NULL) { errno = ENOMEM; goto fail; }
  for (int i = 0; i < n; i++) c->pidfds[i] = -1;
  return 1;
fail:
  err = errno;
  chan_release(c);
  return mp_raise_errno(L, err, what);
}

/* chan:after_fork(mine): in a new child, drop the parent's ends (all of them unless mine). */
static int chan_after_fork(lua_State *L) {
  chan *c = mp_checkself(L, 1, &CHAN_C);
  c->foreign = 1;
  close_fd(&c->task_w);
  close_fd(&c->res_r);
  if (!lua_toboolean(L, 2)) {
    close_fd(&c->task_r);
    close_fd(&c->res_w);
  }
  return 0;
}

/* chan:close_tasks(): no more tasks; idle workers read end-of-file and exit. */
static int chan_close_tasks(lua_State *L) {
  chan *c = checkowner(L);
  close_fd(&c->task_w);
  return 0;
}

/* chan:watch(index, pidfd | nil): the sentinel of the worker in slot index. */
static int chan_watch(lua_State *L) {
  chan *c = checkowner(L);
  lua_Integer i = luaL_checkinteger(L, 2);
  luaL_argcheck(L, i >= 1 && i <= c->nslots, 2, "slot out of range");
  c->pidfds[i - 1] = (int)luaL_optinteger(L, 3, -1);
  return 0;
}

/*
** chan:slot(index) --> task, batch_first, batch_count, taking of the (dead)
** worker in slot index (task nil between tasks; taking true when it may have
** taken a message it had not named yet), and clears the slot for a successor.
*/
static int chan_slot(lua_State *L) {
  chan *c = checkchan(L);
  lua_Integer i = luaL_checkinteger(L, 2);
  luaL_argcheck(L, i >= 1 && i <= c->nslots, 2, "slot out of range");
  pool_slot *s = slot_at(c, (int)i - 1);
  uint64_t t = atomic_load(&s->task);
  if (t == 0) lua_pushnil(L); else lua_pushinteger(L, (lua_Integer)t);
  lua_pushinteger(L, (lua_Integer)atomic_load(&s->batch_first));
  lua_pushinteger(L, (lua_Integer)atomic_load(&s->batch_count));
  lua_pushboolean(L, atomic_load(&s->taking) != 0);
  atomic_store(&s->taking, 0);
  atomic_store(&s->task, 0);
  atomic_store(&s->batch_first, 0);
  atomic_store(&s->batch_count, 0);
  atomic_store(&s->committed, 0);
  return 4;
}

/* ---- parent: sending tasks -------------------------------------------- */

/* Tries to hand the stalled message to the socket. 1 when nothing is stalled any more. */
static int flush_stall(lua_State *L, chan *c) {
  if (!c->stalled) return 1;
  int err = send_msg(c->task_w, c->stall.data, c->stall.len, 1);
  if (err == EAGAIN || err == EWOULDBLOCK) return 0;
  if (err) mp_raise_errno(L, err, "pool: sending a task");
  c->stalled = 0;
  return 1;
}

/* lua_pcall'd (item, index, codec_call): encodes one item alone, to name it in an error. */
static int item_error(lua_State *L) {
  codec_call *cc = lua_touserdata(L, 3);
  lua_Integer i = lua_tointeger(L, 2);
  char root[32];
  snprintf(root, sizeof root, "item %lld", (long long)i);
  cc->state = 1;
  mp_serial_encode(L, 1, 1, mp_serial_scratch(L), root);
  cc->state = 2;
  return 0;
}

/* chan:begin(): starts a batch; false while a previous one waits for room. */
static int chan_begin(lua_State *L) {
  chan *c = checkowner(L);
  if (c->task_w < 0) return luaL_error(L, "pool is not running");
  if (!flush_stall(L, c)) { lua_pushboolean(L, 0); return 1; }
  pbuf *b = &c->out;
  b->len = 0;
  char *p = pbuf_reserve(L, b, CHDR);
  memset(p, 0, CHDR);
  p[0] = 'K';
  b->len = CHDR;
  c->batch_n = 0;
  lua_pushboolean(L, 1);
  return 1;
}

/*
** Appends one task (kind, id, fn, src[i..j]) to the batch being built. 'M'
** and 'S' send src[i..j]; 'A' sends src[1..j] as one call's arguments. The
** function's bytes are left out when the previous task of the batch had the
** same function: the worker that runs this task has just run that one. Returns
** 0, or 1 with a message on top when an item cannot be sent (the task is then
** dropped from the batch). Stack: src at 6, scratch from 9.
*/
static int add_task(lua_State *L, chan *c, char kind, uint64_t id, uint32_t fn_id,
                    const char *fn, size_t fn_len, int raw, lua_Integer i, lua_Integer j) {
  pbuf *b = &c->out;
  size_t entry = b->len;
  lua_Integer count = j - i + 1;
  if (count < 0) count = 0;
  if (c->batch_n > 0 && c->batch_fn == fn_id) fn_len = 0;
  char *p = pbuf_reserve(L, b, 4 + HDR + fn_len);
  memset(p, 0, 4 + HDR);
  p[4] = kind;
  put_u32(p + 8, fn_id);
  put_u64(p + 12, id);
  put_u32(p + 20, (uint32_t)fn_len);
  put_u32(p + 24, (uint32_t)count);
  memcpy(p + 4 + HDR, fn, fn_len);
  b->len += 4 + HDR + fn_len;
  int per = kind == 'A' ? (int)(count > 0 ? count : 0) : GROUP;
  if (kind == 'A' && count == 0) add_group(L, b, 9, 0);
  luaL_checkstack(L, per + 8, "too many arguments");
  for (lua_Integer k = i; k <= j; ) {
    int g = (int)((j - k + 1) < per ? (j - k + 1) : per);
    for (int q = 0; q < g; q++) {
      if (raw) lua_rawgeti(L, 6, k + q); else lua_geti(L, 6, k + q);
    }
    if (protected_group(L, b, 9) != LUA_OK) {
      b->len = entry;                      /* drop this task from the batch */
      /* Name the first item that cannot be sent. */
      lua_settop(L, 8);
      for (int q = 0; q < g; q++) {
        codec_call cc = { NULL, NULL, 0, 0 };
        lua_pushcfunction(L, item_error);
        if (raw) lua_rawgeti(L, 6, k + q); else lua_geti(L, 6, k + q);
        lua_pushinteger(L, k + q);
        lua_pushlightuserdata(L, &cc);
        if (codec_status(L, &cc, lua_pcall(L, 3, 0, 0)) != LUA_OK) break;
      }
      if (lua_gettop(L) == 8) lua_pushfstring(L, "item %d: cannot be sent", (int)k);
      return 1;
    }
    lua_settop(L, 8);
    k += g;
  }
  put_u32(b->data + entry, (uint32_t)(b->len - entry - 4));
  if (c->batch_n == 0) put_u64(b->data + 8, id);
  c->batch_n++;
  c->batch_fn = fn_id;
  put_u32(b->data + 4, c->batch_n);
  return 0;
}

/*
** chan:add(kind, task_id, fn_id, fn_bytes, src, i, j) --> true, or nil and a
** message when an item cannot be sent (returned, not raised, so that only the
** job fails). Task ids within a batch are consecutive.
*/
/* The arguments chan:add and chan:add_run share: (kind, id, fn_id, fn_bytes, src, i). */
typedef struct task_spec {
  int kind;
  uint64_t id;
  uint32_t fn_id;
  const char *fn;
  size_t fn_len;
  int raw;                    /* src has no metatable: read it with lua_rawgeti */
  lua_Integer i;
} task_spec;

static void check_task_spec(lua_State *L, task_spec *t) {
  t->kind = luaL_checkstring(L, 2)[0];
  t->id = (uint64_t)luaL_checkinteger(L, 3);
  t->fn_id = (uint32_t)luaL_checkinteger(L, 4);
  t->fn = luaL_checklstring(L, 5, &t->fn_len);
  luaL_checktype(L, 6, LUA_TTABLE);
  t->raw = !lua_getmetatable(L, 6);
  if (!t->raw) lua_pop(L, 1);
  t->i = luaL_checkinteger(L, 7);
}

static int chan_add(lua_State *L) {
  chan *c = checkowner(L);
  task_spec t;
  check_task_spec(L, &t);
  lua_Integer j = luaL_checkinteger(L, 8);
  lua_settop(L, 8);
  if (add_task(L, c, t.kind, t.id, t.fn_id, t.fn, t.fn_len, t.raw, t.i, j)) {
    lua_pushnil(L);
    lua_insert(L, -2);
    return 2;
  }
  lua_pushboolean(L, 1);
  return 1;
}

/*
** chan:add_run(kind, first_id, fn_id, fn_bytes, src, i, stop, cs, nchunks)
** --> chunks added [, message]: up to nchunks tasks of cs items each from
** src[i..stop], ids first_id, first_id+1... One call for many small chunks:
** the per-task cost stays in C. Stops at a chunk holding an item that cannot
** be sent, with the message.
*/
static int chan_add_run(lua_State *L) {
  chan *c = checkowner(L);
  task_spec t;
  check_task_spec(L, &t);
  lua_Integer i = t.i, stop = luaL_checkinteger(L, 8);
  lua_Integer cs = luaL_checkinteger(L, 9), nchunks = luaL_checkinteger(L, 10);
  luaL_argcheck(L, cs >= 1, 9, "chunksize must be at least 1");
  lua_settop(L, 6);
  lua_pushnil(L);                      /* 7, 8: the layout add_task expects */
  lua_pushnil(L);
  lua_Integer added = 0;
  while (added < nchunks && i <= stop) {
    lua_Integer j = stop - i < cs ? stop : i + cs - 1;     /* i + cs may overflow */
    if (add_task(L, c, t.kind, t.id + (uint64_t)added, t.fn_id, t.fn, t.fn_len, t.raw, i, j)) {
      lua_pushinteger(L, added);
      lua_insert(L, -2);
      return 2;
    }
    added++;
    i = j + 1;
  }
  lua_pushinteger(L, added);
  return 1;
}

/*
** Raw access to the fields of task records and jobs: they are set in their
** constructors, and an AsyncResult's metatable would make lua_getfield walk
** its class chain for every absent one.
*/
static int rawfield(lua_State *L, int t, const char *k) {
  t = lua_absindex(L, t);
  lua_pushstring(L, k);
  return lua_rawget(L, t);
}

/* t[k] = the value on top (popped), raw. */
static void rawsetfield(lua_State *L, int t, const char *k) {
  t = lua_absindex(L, t);
  lua_pushstring(L, k);
  lua_insert(L, -2);
  lua_rawset(L, t);
}

/*
** chan:add_applies(queue, k, kmax, first_id, records, limit) --> added, nextk
** [, message]: adds the apply_async jobs queue[k..kmax] not sent yet (see AV
** in pool.lua: [3] arguments, [4] function id, [5] its bytes; id 0 until
** sent), at most limit of them, with ids from first_id; sets each one's id and
** records[ring key] to it. Stops at a map job (nextk is its index), or at a
** job whose arguments cannot be sent (nextk is its index, with the message).
*/
static int chan_add_applies(lua_State *L) {
  chan *c = checkowner(L);
  luaL_checktype(L, 2, LUA_TTABLE);
  lua_Integer k = luaL_checkinteger(L, 3), kmax = luaL_checkinteger(L, 4);
  uint64_t id = (uint64_t)luaL_checkinteger(L, 5);
  luaL_checktype(L, 6, LUA_TTABLE);
  lua_Integer limit = luaL_checkinteger(L, 7);
  /* The layout add_task expects: arguments at 6, 7 and 8 kept, scratch from 9. */
  lua_settop(L, 6);
  lua_pushvalue(L, 6);                 /* 7: records */
  lua_pushnil(L);                      /* 8: the job */
  lua_Integer added = 0;
  for (; k <= kmax && added < limit; k++) {
    lua_settop(L, 8);
    if (lua_rawgeti(L, 2, k) != LUA_TTABLE) continue;   /* dropped head entries are false */
    lua_replace(L, 8);
    if (rawfield(L, 8, "_nv") != LUA_TNUMBER) break;   /* a map job */
    rawfield(L, 8, "id");
    lua_Integer sent = lua_tointeger(L, -1);
    rawfield(L, 8, "_ready");
    int ready = lua_toboolean(L, -1);
    if (sent != 0 || ready) continue;
    lua_rawgeti(L, 8, 4);
    uint32_t fn_id = (uint32_t)lua_tointeger(L, -1);
    lua_rawgeti(L, 8, 5);              /* stays referenced by the job: fn stays valid */
    size_t fn_len = 0;
    const char *fn = lua_tolstring(L, -1, &fn_len);
    lua_rawgeti(L, 8, 3);
    if (fn == NULL || lua_type(L, -1) != LUA_TTABLE) return luaL_error(L, "pool: corrupt apply job");
    lua_Integer n;
    if (lua_getfield(L, -1, "n") == LUA_TNUMBER) n = lua_tointeger(L, -1);
    else n = luaL_len(L, -2);          /* as args.n or #args */
    lua_pop(L, 1);
    lua_replace(L, 6);
    lua_settop(L, 8);
    int raw = !lua_getmetatable(L, 6);
    if (!raw) lua_pop(L, 1);
    if (add_task(L, c, 'A', id, fn_id, fn, fn_len, raw, 1, n)) {
      lua_pushinteger(L, added);
      lua_pushinteger(L, k);
      lua_rotate(L, -3, -1);           /* added, k, message */
      return 3;
    }
    lua_pushinteger(L, (lua_Integer)id);
    rawsetfield(L, 8, "id");
    lua_pushvalue(L, 8);
    lua_rawseti(L, 7, (lua_Integer)((id - 1) & (POOL_RING - 1)) + 1);
    id++;
    added++;
  }
  lua_pushinteger(L, added);
  lua_pushinteger(L, k);
  return 2;
}

/* chan:commit(): sends the batch (kept, and sent later, when the socket is full). */
static int chan_commit(lua_State *L) {
  chan *c = checkowner(L);
  pbuf *b = &c->out;
  if (c->batch_n == 0) return 0;
  c->batch_n = 0;
  int err = send_msg(c->task_w, b->data, b->len, 1);
  if (err == EAGAIN || err == EWOULDBLOCK) {
    pbuf t = c->stall;           /* keep the message: swap buffers, no copy */
    c->stall = c->out;
    c->out = t;
    c->stalled = 1;
  } else if (err) {
    return mp_raise_errno(L, err, "pool: sending a task");
  }
  return 0;
}

/*
** chan:idle() --> true when every task message sent has been taken by a
** worker (nothing stalled in the parent, nothing left in the socket: for
** AF_UNIX, SIOCOUTQ counts the bytes the receiver has not consumed).
*/
static int chan_idle(lua_State *L) {
  chan *c = checkowner(L);
  int queued = 0;
  if (c->task_w >= 0 && ioctl(c->task_w, SIOCOUTQ, &queued) != 0) queued = 1;
  lua_pushboolean(L, !c->stalled && queued == 0);
  return 1;
}

/* chan:busy(index) --> true while the worker in slot index takes or holds a batch, or runs a task. */
static int chan_busy(lua_State *L) {
  chan *c = checkchan(L);
  lua_Integer i = luaL_checkinteger(L, 2);
  luaL_argcheck(L, i >= 1 && i <= c->nslots, 2, "slot out of range");
  pool_slot *s = slot_at(c, (int)i - 1);
  lua_pushboolean(L, atomic_load(&s->taking) != 0 || atomic_load(&s->batch_count) != 0 ||
                     atomic_load(&s->task) != 0);
  return 1;
}

/* chan:stalled() --> true while a task waits for room in the socket. */
static int chan_stalled(lua_State *L) {
  chan *c = checkowner(L);
  lua_pushboolean(L, c->stalled && !flush_stall(L, c));
  return 1;
}

/* ---- parent: receiving results ---------------------------------------- */

/* Appends the event (id, kind, x) to the events table at idx. */
static void add_event(lua_State *L, int events, int *nev, uint64_t id, char kind) {
  /* value x is on top of the stack */
  int base = *nev * 3;
  lua_pushinteger(L, (lua_Integer)id);
  lua_rawseti(L, events, base + 1);
  char k[1] = { kind };
  lua_pushlstring(L, k, 1);
  lua_rawseti(L, events, base + 2);
  lua_rawseti(L, events, base + 3);
  (*nev)++;
}

/* Decodes all groups of an error into a table {message, traceback, pid}. */
static void push_error_values(lua_State *L, const char *p, const char *end) {
  lua_createtable(L, 3, 0);
  int t = lua_gettop(L);
  int k = 0;
  while (end - p >= 8) {
    uint32_t glen = get_u32(p), gn = get_u32(p + 4);
    p += 8;
    if ((size_t)(end - p) < glen) break;
    if (protected_decode(L, p, glen) != LUA_OK) {
      lua_rawseti(L, t, 1);
      return;
    }
    int n = lua_gettop(L) - t;
    if ((uint32_t)n != gn) { lua_settop(L, t); break; }
    for (int q = n; q >= 1; q--) lua_rawseti(L, t, k + q);
    k += n;
    p += glen;
  }
}

/*
** An apply_async job without callbacks (see AV in pool.lua: _nv set, [3] its
** arguments, [5] its function's bytes) is settled here, without an event:
** the Lua side only counts it (nev[1]). Returns 1 when done.
*/
static int settle_apply(lua_State *L, int rec, int records, uint64_t id, uint32_t got) {
  if (rawfield(L, rec, "_nv") != LUA_TNUMBER) { lua_pop(L, 1); return 0; }
  lua_pop(L, 1);
  int t1 = rawfield(L, rec, "callback"), t2 = rawfield(L, rec, "error_callback");
  lua_pop(L, 2);
  if (t1 != LUA_TNIL || t2 != LUA_TNIL) return 0;
  lua_pushinteger(L, (lua_Integer)got);
  rawsetfield(L, rec, "_nv");
  lua_pushboolean(L, 1);
  rawsetfield(L, rec, "_ready");
  lua_pushnil(L);
  lua_rawseti(L, rec, 3);
  lua_pushnil(L);
  lua_rawseti(L, rec, 5);
  lua_pushnil(L);
  lua_rawseti(L, records, (lua_Integer)((id - 1) & (POOL_RING - 1)) + 1);
  return 1;
}

static lua_Integer field_int(lua_State *L, int t, const char *k) {
  rawfield(L, t, k);
  lua_Integer v = lua_tointeger(L, -1);
  lua_pop(L, 1);
  return v;
}

/*
** A chunk of a run record (see pool.lua) done: its job's counters move here,
** without an event for the Lua loop (nev[1] counts it), unless it completes
** the job: then an 'F' event carries the job.
*/
static void settle_run(lua_State *L, int rec, int records, int events, int *nev,
                       uint64_t id, lua_Integer skip) {
  lua_rawgeti(L, rec, 2);
  lua_Integer off = lua_tointeger(L, -1) + skip;
  lua_pop(L, 1);
  lua_Integer cs = field_int(L, rec, "cs");
  lua_Integer stop = field_int(L, rec, "stop");
  lua_Integer count = stop - off < cs ? stop - off : cs;
  rawfield(L, rec, "job");
  int job = lua_gettop(L);
  lua_Integer done = field_int(L, job, "chunks_done") + 1;
  lua_pushinteger(L, done);
  rawsetfield(L, job, "chunks_done");
  lua_pushinteger(L, field_int(L, job, "done") + count);
  rawsetfield(L, job, "done");
  lua_pushnil(L);
  lua_rawseti(L, records, (lua_Integer)((id - 1) & (POOL_RING - 1)) + 1);
  nev[1]++;
  rawfield(L, job, "exhausted");
  int exhausted = lua_toboolean(L, -1);
  lua_pop(L, 1);
  if (exhausted && done == field_int(L, job, "chunks_sent")) {
    lua_pushvalue(L, job);
    add_event(L, events, nev, id, 'F');
  }
  lua_settop(L, job - 1);
}

/* One result message: values into records[id][1] from offset records[id][2]. */
static void take_result(lua_State *L, const char *p, size_t len, int records, int events, int *nev) {
  if (len < HDR) return;
  char kind = p[0];
  uint64_t id = get_u64(p + 8);
  uint32_t count = get_u32(p + 16);
  const char *end = p + len, *q = p + HDR;
  if (kind == 'I' || kind == 'E') {
    push_error_values(L, q, end);
    add_event(L, events, nev, id, kind);
    return;
  }
  /* records is a ring indexed by id modulo POOL_RING (see pool.lua) */
  if (lua_rawgeti(L, records, (lua_Integer)((id - 1) & (POOL_RING - 1)) + 1) != LUA_TTABLE) {
    lua_pop(L, 1);                       /* an abandoned task */
    return;
  }
  int rec = lua_gettop(L);
  /* A run record (run_last set) stands for tasks id..run_last, chunks of cs items. */
  rawfield(L, rec, "id");
  uint64_t first = (uint64_t)lua_tointeger(L, -1);
  rawfield(L, rec, "run_last");
  int run = lua_isinteger(L, -1);
  uint64_t last = run ? (uint64_t)lua_tointeger(L, -1) : first;
  lua_pop(L, 2);
  if (id < first || id > last) { lua_pop(L, 1); return; }
  lua_Integer skip = 0;
  if (run) {
    rawfield(L, rec, "cs");
    skip = (lua_Integer)(id - first) * lua_tointeger(L, -1);
    lua_pop(L, 1);
  }
  lua_rawgeti(L, rec, 1);
  int dest = lua_gettop(L);
  lua_rawgeti(L, rec, 2);
  lua_Integer at = lua_tointeger(L, -1) + skip;
  lua_pop(L, 1);
  uint32_t got = 0;
  while (end - q >= 8 && got < count) {
    uint32_t glen = get_u32(q), gn = get_u32(q + 4);
    q += 8;
    if ((size_t)(end - q) < glen) break;
    luaL_checkstack(L, (int)gn + 4, "result too large");
    if (protected_decode(L, q, glen) != LUA_OK) {
      lua_settop(L, rec - 1);
      lua_createtable(L, 3, 0);
      lua_pushfstring(L, "cannot receive result: %s", lua_tostring(L, -2) ? lua_tostring(L, -2) : "?");
      lua_rawseti(L, -2, 1);
      add_event(L, events, nev, id, 'E');
      return;
    }
    int n = lua_gettop(L) - dest;
    for (int k = n; k >= 1; k--) lua_rawseti(L, dest, at + got + k);
    got += (uint32_t)n;
    q += glen;
  }
  lua_settop(L, dest - 1);
  if (run) {
    settle_run(L, rec, records, events, nev, id, skip);
    lua_settop(L, rec - 1);
    return;
  }
  if (settle_apply(L, rec, records, id, got)) {
    nev[1]++;
    lua_settop(L, rec - 1);
    return;
  }
  lua_settop(L, rec - 1);
  lua_pushinteger(L, got);
  add_event(L, events, nev, id, 'R');
}

/* Entries of a container (u32 length, result message), or one bare result. */
static void take_entries(lua_State *L, const char *p, size_t len, int records, int events, int *nev) {
  if (len < CHDR || p[0] != 'K') { take_result(L, p, len, records, events, nev); return; }
  const char *q = p + CHDR, *end = p + len;
  while (end - q >= 4) {
    uint32_t n = get_u32(q);
    q += 4;
    if ((size_t)(end - q) < n) break;
    take_result(L, q, n, records, events, nev);
    q += n;
  }
}

/*
** chan:journal(records, events, index) --> nevents: the results a dead worker
** finished but had not sent yet (duplicates of results already taken are
** ignored: their records are gone).
*/
static int chan_journal(lua_State *L) {
  chan *c = checkowner(L);
  luaL_checktype(L, 2, LUA_TTABLE);
  luaL_checktype(L, 3, LUA_TTABLE);
  lua_Integer i = luaL_checkinteger(L, 4);
  luaL_argcheck(L, i >= 1 && i <= c->nslots, 4, "slot out of range");
  lua_settop(L, 3);
  pool_slot *s = slot_at(c, (int)i - 1);
  uint32_t used = atomic_load(&s->committed);
  if (used > JCAP) used = 0;
  char *j = journal_of(s);
  j[0] = 'K';
  int nev[2] = { 0, 0 };
  take_entries(L, j, CHDR + used, 2, 3, nev);
  lua_pushinteger(L, nev[0]);
  lua_pushboolean(L, 0);
  lua_pushinteger(L, nev[1]);
  return 3;
}

/* Reads every result message available now. Returns 0 or an errno. */
static int drain(lua_State *L, chan *c, int records, int events, int *nev) {
  if (c->rbuf == NULL) {
    c->rbuf = malloc((size_t)RECV_BATCH * SMALL_MAX);
    if (c->rbuf == NULL) luaL_error(L, "not enough memory");
  }
  for (;;) {
    struct mmsghdr mm[RECV_BATCH];
    struct iovec iov[RECV_BATCH];
    union { struct cmsghdr h; char b[CMSG_SPACE(sizeof(int) * 4)]; } ctl[RECV_BATCH];
    memset(mm, 0, sizeof mm);
    for (int i = 0; i < RECV_BATCH; i++) {
      iov[i].iov_base = c->rbuf + (size_t)i * SMALL_MAX;
      iov[i].iov_len = SMALL_MAX;
      mm[i].msg_hdr.msg_iov = &iov[i];
      mm[i].msg_hdr.msg_iovlen = 1;
      mm[i].msg_hdr.msg_control = ctl[i].b;
      mm[i].msg_hdr.msg_controllen = sizeof ctl[i].b;
    }
    int n = recvmmsg(c->res_r, mm, RECV_BATCH, MSG_DONTWAIT | MSG_CMSG_CLOEXEC, NULL);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
      return errno;
    }
    if (n == 0) return 0;
    /* Open every memfd first: a Lua error below must not leak a passed fd. */
    int bad = 0;
    for (int i = 0; i < n; i++) {
      const char *data;
      size_t len;
      release_map(c);
      int err = open_msg(c, &mm[i].msg_hdr, iov[i].iov_base, mm[i].msg_len, &data, &len);
      if (err) { bad = err; continue; }
      take_entries(L, data, len, records, events, nev);
    }
    release_map(c);
    if (bad) return bad;
    if (n < RECV_BATCH) return 0;
  }
}

/*
** chan:pump(records, events, timeout) --> nevents, died
** Sends a stalled task when there is room, collects the results available
** (waiting up to timeout for the first, at most one wait slice), and reports
** whether a watched worker sentinel is ready. Events are triples (task id, kind, count or error table)
** in `events`; records[id] = {dest, offset} says where a task's values go.
*/
static int chan_pump(lua_State *L) {
  chan *c = checkowner(L);
  luaL_checktype(L, 2, LUA_TTABLE);
  luaL_checktype(L, 3, LUA_TTABLE);
  double deadline = mp_optdeadline(L, 4);
  lua_settop(L, 3);
  int nev[2] = { 0, 0 }, died = 0;
  struct pollfd fds[1 + 4096 + 1];
  for (;;) {
    if (c->task_w >= 0) flush_stall(L, c);
    int err = drain(L, c, 2, 3, nev);
    if (err) return mp_raise_errno(L, err, "pool: receiving results");
    if (nev[0] > 0 || nev[1] > 0 || died) break;
    int nf = 0;
    fds[nf++] = (struct pollfd){ .fd = c->res_r, .events = POLLIN };
    if (c->stalled && c->task_w >= 0) fds[nf++] = (struct pollfd){ .fd = c->task_w, .events = POLLOUT };
    int first_pid = nf;
    for (int i = 0; i < c->nslots; i++)
      if (c->pidfds[i] >= 0) fds[nf++] = (struct pollfd){ .fd = c->pidfds[i], .events = POLLIN };
    double now = mp_now();
    if (now >= deadline) break;
    int sliced;
    double until = mp_slice_end(deadline, &sliced);
    int ms = (int)((until - now) * 1000.0 + 0.999);
    int r = poll(fds, (nfds_t)nf, ms);
    if (r < 0) {
      if (errno != EINTR) return mp_raise_errno(L, errno, "pool: poll");
      mp_check_interrupt(L);
      continue;
    }
    if (r == 0) {
      if (!sliced) continue;
      mp_check_interrupt(L);
      break;              /* a slice without news: the caller looks for lost tasks */
    }
    for (int i = first_pid; i < nf; i++)
      if (fds[i].revents) died = 1;   /* drain first: its last results may be queued */
  }
  lua_pushinteger(L, nev[0]);
  lua_pushboolean(L, died);
  lua_pushinteger(L, nev[1]);
  return 3;
}

/* ---- worker ----------------------------------------------------------- */

/*
** Message handler for a task's error: returns {message, traceback}, with the
** traceback cut where the pool's own frames begin (upvalue 1: their depth).
*/
static int task_msgh(lua_State *L) {
  const char *msg = lua_tostring(L, 1);
  if (msg == NULL) {
    if (luaL_callmeta(L, 1, "__tostring") && lua_type(L, -1) == LUA_TSTRING)
      msg = lua_tostring(L, -1);
    else
      msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
  }
  int depth = (int)lua_tointeger(L, lua_upvalueindex(1));
  lua_Debug ar;
  int total = 0;
  while (lua_getstack(L, total, &ar)) total++;
  int keep = total - depth - 1;          /* frames of the task itself (the handler is level 0) */
  luaL_traceback(L, L, NULL, 1);
  const char *tb = lua_tostring(L, -1);
  /* "stack traceback:" then one line per frame. */
  const char *p = tb;
  int lines = -1;
  while (*p && lines < keep) {
    const char *nl = strchr(p, '\n');
    if (nl == NULL) { p += strlen(p); break; }
    p = nl + 1;
    lines++;
  }
  size_t len = (size_t)(p - tb);
  if (len > 0 && tb[len - 1] == '\n') len--;
  lua_createtable(L, 2, 0);
  lua_pushstring(L, msg);
  lua_rawseti(L, -2, 1);
  lua_pushlstring(L, tb, len);
  lua_rawseti(L, -2, 2);
  return 1;
}

/* Builds an error result for the task: {message, traceback} table at errv. */
static void error_result(lua_State *L, chan *c, uint64_t id, int errv) {
  pbuf *b = &c->out;
  header(L, b, 'E', 0, id, 3, 0);
  int top = lua_gettop(L);
  if (lua_type(L, errv) == LUA_TTABLE) {
    lua_rawgeti(L, errv, 1);
    lua_rawgeti(L, errv, 2);
  } else {
    const char *m = lua_tostring(L, errv);
    lua_pushstring(L, m ? m : "unknown error");
    lua_pushnil(L);
  }
  lua_pushinteger(L, mp_self_pid());
  if (protected_group(L, b, top + 1) != LUA_OK) {
    lua_settop(L, top);
    header(L, b, 'E', 0, id, 0, 0);
  }
  lua_settop(L, top);
}

static void send_all(lua_State *L, chan *c, const char *p, size_t len) {
  int err;
  while ((err = send_msg(c->res_w, p, len, 0)) == EINTR)
    ;
  if (err) mp_raise_errno(L, err, "pool: sending a result");
}

/* Sends the journal's finished results as one container and empties it. */
static void flush_journal(lua_State *L, chan *c, pool_slot *s, uint32_t *nres) {
  uint32_t used = atomic_load_explicit(&s->committed, memory_order_relaxed);
  if (used == 0) return;
  char *j = journal_of(s);
  memset(j, 0, CHDR);
  j[0] = 'K';
  put_u32(j + 4, *nres);
  send_all(L, c, j, CHDR + used);
  atomic_store(&s->committed, 0);
  *nres = 0;
}

/*
** Records the result in c->out in the journal (flushing it first when full),
** or sends it alone when it is larger than the journal. Either way the result
** is safe before the worker starts its next task.
*/
static void keep_result(lua_State *L, chan *c, pool_slot *s, uint32_t *nres) {
  size_t len = c->out.len;
  uint32_t used = atomic_load_explicit(&s->committed, memory_order_relaxed);
  if (used + 4 + len > JCAP) {
    flush_journal(L, c, s, nres);
    used = 0;
  }
  if (4 + len > JCAP) {
    pbuf *b = &c->stall;       /* unused in a worker */
    b->len = 0;
    char *p = pbuf_reserve(L, b, CHDR + 4);
    memset(p, 0, CHDR);
    p[0] = 'K';
    put_u32(p + 4, 1);
    put_u32(p + CHDR, (uint32_t)len);
    b->len = CHDR + 4;
    pbuf_add(L, b, c->out.data, len);
    send_all(L, c, b->data, b->len);
    return;
  }
  char *j = journal_of(s) + CHDR + used;
  put_u32(j, (uint32_t)len);
  memcpy(j + 4, c->out.data, len);
  atomic_store_explicit(&s->committed, used + 4 + (uint32_t)len, memory_order_release);
  (*nres)++;
}

/*
** Runs one task message. Stack: fn cache at `cache`, message handler at `msgh`.
** Leaves the result message in c->out.
*/
static void run_task(lua_State *L, chan *c, const char *m, size_t len, int cache, int msgh) {
  char kind = m[0];
  uint32_t fn_id = get_u32(m + 4);
  uint64_t id = get_u64(m + 8);
  uint32_t fn_len = get_u32(m + 16), count = get_u32(m + 20);
  const char *p = m + HDR, *end = m + len;
  int base = lua_gettop(L);
  if ((size_t)(end - p) < fn_len) luaL_error(L, "pool: corrupt task message");
  if (lua_rawgeti(L, cache, fn_id) == LUA_TNIL) {
    lua_pop(L, 1);
    if (fn_len == 0) {         /* sent without bytes: the previous task's function, which failed */
      lua_pushliteral(L, "cannot receive the task's function: not sent");
      error_result(L, c, id, lua_gettop(L));
      lua_settop(L, base);
      return;
    }
    if (protected_decode(L, p, fn_len) != LUA_OK) {
      lua_pushfstring(L, "cannot receive the task's function: %s", lua_tostring(L, -1));
      error_result(L, c, id, lua_gettop(L));
      lua_settop(L, base);
      return;
    }
    lua_settop(L, base + 1);
    if (lua_rawlen(L, cache) >= FN_CACHE_MAX) {   /* bounded: start afresh */
      lua_newtable(L);
      lua_replace(L, cache);
    }
    lua_pushvalue(L, -1);
    lua_rawseti(L, cache, fn_id);
  }
  int fn = base + 1;
  p += fn_len;
  pbuf *b = &c->out;
  header(L, b, 'R', 0, id, count, 0);
  uint32_t total = 0;
  while (end - p >= 8) {
    uint32_t glen = get_u32(p), gn = get_u32(p + 4);
    p += 8;
    if ((size_t)(end - p) < glen) luaL_error(L, "pool: corrupt task message");
    luaL_checkstack(L, 2 * (int)gn + 16, "too many values");
    int a = lua_gettop(L) + 1;
    if (protected_decode(L, p, glen) != LUA_OK) {
      lua_pushfstring(L, "cannot receive the task's arguments: %s", lua_tostring(L, -1));
      error_result(L, c, id, lua_gettop(L));
      lua_settop(L, base);
      return;
    }
    p += glen;
    int n = lua_gettop(L) - a + 1;
    if (kind == 'A') {
      lua_pushvalue(L, fn);
      lua_rotate(L, a, 1);
      if (lua_pcall(L, n, LUA_MULTRET, msgh) != LUA_OK) {
        error_result(L, c, id, lua_gettop(L));
        lua_settop(L, base);
        return;
      }
      int r = lua_gettop(L) - a + 1;
      put_u32(b->data + 16, (uint32_t)r);
      if (r > 0 && protected_group(L, b, a) != LUA_OK) goto unsendable;
      total += (uint32_t)r;
      continue;
    }
    for (int k = 0; k < n; k++) {
      lua_pushvalue(L, fn);
      int nargs = 1;
      if (kind == 'S') {
        int t = a + k;
        if (lua_type(L, t) != LUA_TTABLE) {
          lua_pushfstring(L, "starmap: item %d is not a table of arguments", (int)(total + (uint32_t)k + 1));
          error_result(L, c, id, lua_gettop(L));
          lua_settop(L, base);
          return;
        }
        lua_Integer na;
        if (lua_getfield(L, t, "n") == LUA_TNUMBER) na = lua_tointeger(L, -1);
        else na = (lua_Integer)lua_rawlen(L, t);
        lua_pop(L, 1);
        luaL_checkstack(L, (int)na + 4, "too many arguments");
        for (lua_Integer q = 1; q <= na; q++) lua_rawgeti(L, t, q);
        nargs = (int)na;
      } else {
        lua_pushvalue(L, a + k);
      }
      if (lua_pcall(L, nargs, 1, msgh) != LUA_OK) {
        error_result(L, c, id, lua_gettop(L));
        lua_settop(L, base);
        return;
      }
    }
    /* the n first results sit above the n arguments */
    if (n > 0 && protected_group(L, b, a + n) != LUA_OK) goto unsendable;
    lua_settop(L, a - 1);
    total += (uint32_t)n;
  }
  lua_settop(L, base);
  return;
unsendable:
  lua_pushfstring(L, "cannot send the task's result: %s", lua_tostring(L, -1));
  error_result(L, c, id, lua_gettop(L));
  lua_settop(L, base);
}

/* Receives one task (blocking). 0 with the message, or -1 at end-of-file. */
/*
** A worker never sleeps inside recvmsg: woken by a message, it would take it
** from the queue before dying of a SIGKILL sent meanwhile (the kernel finishes
** the call first), and the message would be lost with nobody's slot naming it.
** It sleeps in poll instead and takes the message only while running, with
** the slot's `taking` flag raised from before recvmsg until the batch is named:
** a message that left the socket is always held by a slot that says so.
*/
static int recv_task(lua_State *L, chan *c, pool_slot *slot, char *buf, const char **data, size_t *len) {
  for (;;) {
    /*
    ** Raised before the message can leave the socket, lowered by the caller
    ** once the batch is named: a worker in between is never idle to the
    ** parent, however long it is delayed there.
    */
    atomic_store(&slot->taking, 1);
    struct iovec iov = { buf, SMALL_MAX };
    union { struct cmsghdr h; char b[CMSG_SPACE(sizeof(int) * 4)]; } ctl;
    struct msghdr m = { .msg_iov = &iov, .msg_iovlen = 1,
                        .msg_control = ctl.b, .msg_controllen = sizeof ctl.b };
    ssize_t n = recvmsg(c->task_r, &m, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
    if (n < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        atomic_store(&slot->taking, 0);
        struct pollfd pfd = { .fd = c->task_r, .events = POLLIN };
        if (poll(&pfd, 1, -1) < 0 && errno == EINTR) mp_check_interrupt(L);
        continue;
      }
      if (errno == EINTR) { mp_check_interrupt(L); continue; }
      mp_raise_errno(L, errno, "pool: receiving a task");
    }
    if (n == 0) { atomic_store(&slot->taking, 0); return -1; }
    int err = open_msg(c, &m, buf, (size_t)n, data, len);
    if (err) mp_raise_errno(L, err, "pool: receiving a task");
    return 0;
  }
}

/*
** core.pool_work(chan, index, maxtasks): the worker's loop. Runs tasks until
** the parent closes the task socket (or maxtasks tasks were run) and returns.
*/
static int core_pool_work(lua_State *L) {
  chan *c = mp_checkself(L, 1, &CHAN_C);
  if (c->slots == NULL || c->task_r < 0) return luaL_error(L, "pool channel is closed");
  lua_Integer index = luaL_checkinteger(L, 2);
  luaL_argcheck(L, index >= 1 && index <= c->nslots, 2, "slot out of range");
  lua_Integer maxtasks = luaL_optinteger(L, 3, 0);
  lua_settop(L, 1);
  lua_newuserdatauv(L, SMALL_MAX, 0);               /* 2: receive buffer */
  lua_newtable(L);                                   /* 3: function cache */
  lua_Debug ar;
  int depth = 0;
  while (lua_getstack(L, depth, &ar)) depth++;
  lua_pushinteger(L, depth);
  lua_pushcclosure(L, task_msgh, 1);                 /* 4: message handler */
  pool_slot *slot = slot_at(c, (int)index - 1);
  lua_Integer done = 0;
  uint32_t nres = 0;
  while (maxtasks == 0 || done < maxtasks) {
    release_map(c);
    const char *m;
    size_t len;
    if (recv_task(L, c, slot, lua_touserdata(L, 2), &m, &len) < 0) break;
    mp_fault("pool_take");       /* test builds: stall between taking and claiming */
    if (len < CHDR || m[0] != 'K') luaL_error(L, "pool: corrupt task message");
    atomic_store(&slot->batch_first, get_u64(m + 8));
    atomic_store(&slot->batch_count, get_u32(m + 4));
    atomic_store(&slot->taking, 0);
    const char *q = m + CHDR, *end = m + len;
    while (end - q >= 4) {
      uint32_t n = get_u32(q);
      q += 4;
      if ((size_t)(end - q) < n || n < HDR) luaL_error(L, "pool: corrupt task message");
      atomic_store(&slot->task, get_u64(q + 8));
      run_task(L, c, q, n, 3, 4);
      keep_result(L, c, slot, &nres);
      atomic_store(&slot->task, 0);
      lua_settop(L, 4);
      q += n;
      done++;
    }
    flush_journal(L, c, slot, &nres);
    atomic_store(&slot->batch_count, 0);
  }
  release_map(c);
  return 0;
}

/* chan:send_init_error(message, traceback): an initializer failed in this worker. */
static int chan_send_init_error(lua_State *L) {
  chan *c = checkchan(L);
  lua_settop(L, 3);
  lua_createtable(L, 2, 0);
  lua_pushvalue(L, 2);
  lua_rawseti(L, -2, 1);
  lua_pushvalue(L, 3);
  lua_rawseti(L, -2, 2);
  error_result(L, c, 0, 4);
  c->out.data[0] = 'I';
  send_all(L, c, c->out.data, c->out.len);
  return 0;
}

/* ---- small helpers ---------------------------------------------------- */

/* lua_pcall'd (fn, codec_call): the serialized function as a string. */
static int dump_fn(lua_State *L) {
  codec_call *cc = lua_touserdata(L, 2);
  cc->state = 1;
  mp_wbuf *s = mp_serial_scratch(L);
  mp_serial_encode(L, 1, 1, s, "function");
  cc->state = 2;
  lua_pushlstring(L, s->data, s->len);
  return 1;
}

/* core.pool_dumpfn(fn) --> the serialized function, or nil and why it cannot be sent. */
static int core_pool_dumpfn(lua_State *L) {
  luaL_checkany(L, 1);
  lua_settop(L, 1);
  codec_call cc = { NULL, NULL, 0, 0 };
  lua_pushcfunction(L, dump_fn);
  lua_insert(L, 1);
  lua_pushlightuserdata(L, &cc);
  if (codec_status(L, &cc, lua_pcall(L, 2, 1, 0)) != LUA_OK) {
    lua_pushnil(L);
    lua_insert(L, -2);
    return 2;
  }
  return 1;
}

/* core.newlist(n): a table with room for n array items (results filled out of order). */
static int core_newlist(lua_State *L) {
  lua_Integer n = luaL_checkinteger(L, 1);
  if (n < 0) n = 0;
  if (n > (1 << 28)) n = 1 << 28;
  lua_createtable(L, (int)n, 1);
  return 1;
}

/* core.isatty(fd) */
static int core_isatty(lua_State *L) {
  lua_pushboolean(L, isatty((int)luaL_checkinteger(L, 1)));
  return 1;
}

void mp_pool_open(lua_State *L) {
  static const luaL_Reg methods[] = {
    {"begin", chan_begin},
    {"add", chan_add},
    {"add_run", chan_add_run},
    {"add_applies", chan_add_applies},
    {"commit", chan_commit},
    {"journal", chan_journal},
    {"idle", chan_idle},
    {"busy", chan_busy},
    {"stalled", chan_stalled},
    {"pump", chan_pump},
    {"watch", chan_watch},
    {"slot", chan_slot},
    {"close_tasks", chan_close_tasks},
    {"after_fork", chan_after_fork},
    {"send_init_error", chan_send_init_error},
    {"close", chan_close},
    {NULL, NULL}
  };
  static const luaL_Reg metamethods[] = {
    {"__gc", chan_close},
    {"__close", chan_close},
    {NULL, NULL}
  };
  static const luaL_Reg funcs[] = {
    {"pool_channel", core_pool_channel},
    {"pool_work", core_pool_work},
    {"pool_dumpfn", core_pool_dumpfn},
    {"newlist", core_newlist},
    {"isatty", core_isatty},
    {NULL, NULL}
  };
  mp_newclass(L, &CHAN_C, methods, metamethods);
  lua_pop(L, 1);
  luaL_setfuncs(L, funcs, 0);
}
