/*
** The fork server: a small process that forks children on request, so that a
** process which runs threads, or holds much memory, never forks itself.
** Engine code: no Lua; functions return 0 or an errno value.
**
** Who is who:
**   owner    the process that started the server (mp_fork_service); the
**            server ends when the owner's lifeline pipe closes (the owner
**            exited, died, or let go of it), once its own children are reaped;
**   server   listens on a Unix socket in a private directory (mode 0700,
**            made by mkdtemp) and accepts only clients of its own uid that
**            present the 32-byte random key it was started with;
**   client   any process that knows the address and key (the owner, its
**            forked children, the server's children): one control connection
**            per client process;
**   child    a process the server forked for a client. For the kernel it is
**            the server's child; for mp it is the client's (a remote entry,
**            proc.h).
**
** One spawn: the client makes a socket pair, sends one end (the *status
** channel*) with a SPAWN message on its control connection, and writes the
** request on its own end: a header, the fds to pass (SCM_RIGHTS, in batches),
** then the payload bytes. The server forks; the child reads the request from
** the channel and runs it. The server writes on the channel the child's pid
** (with a pidfd, so that the client signals that very process), and later
** its wait status once it has reaped it; then closes the channel. So the
** client's end polls readable exactly when the child has ended (after the pid
** record, read at start): it is the child's sentinel.
**
** Deaths. The client dies: the child runs on; its status is written to a
** channel nobody reads. The child dies (any time, before reading its request
** too): the server reaps it and reports. The server dies: every channel reads
** end-of-file; a client then watches each child through the pidfd it got
** (proc.c puts it in the sentinel's place), reports exit code 255 once the
** child has ended (its status was lost), and the next spawn starts a new server. The owner dies: the
** server stops listening, removes its socket and directory, and exits once
** its last child is reaped.
*/
#ifndef MP_FORKSERVER_H
#define MP_FORKSERVER_H

#include <stddef.h>
#include <sys/types.h>

#define MP_FS_KEYLEN 32
#define MP_FS_MAXFDS 65536          /* fds one request may carry */

typedef struct mp_fs_addr {
  char dir[108];                    /* the private directory ("" when none) */
  char path[108];                   /* the socket in it (sun_path's limit) */
  unsigned char key[MP_FS_KEYLEN];
} mp_fs_addr;

/*
** Makes the private directory (under $TMPDIR, or /tmp when that path would be
** too long), a listening socket in it and a random key. 0 or errno; on
** failure nothing is left behind.
*/
int mp_fs_listen(mp_fs_addr *a, int *listen_fd);

/* Removes the socket and the directory (idempotent). */
void mp_fs_unlink(const mp_fs_addr *a);

/*
** The server's loop, run in the process mp_fork_service made, with the
** listening socket and the lifeline's read end. Returns only in a child it
** forked: 0, with *channel the status channel to read the request from (and
** then to close). In the server itself it never returns: it _exits when its
** owner is gone and its last child reaped.
*/
int mp_fs_serve(int listen_fd, int lifeline, const mp_fs_addr *a, int *channel);

/*
** In the child: reads the request from its channel. *payload is malloc'd,
** *fds a malloc'd array of *nfds received fds (close-on-exec). 0, EPROTO on
** a malformed request, EPIPE when the client went away first, or ENOMEM.
*/
int mp_fs_read_request(int channel, char **payload, size_t *len, int **fds, size_t *nfds);

/*
** A client's control connection: connects and presents the key. 0, or
** ECONNREFUSED / ENOENT when no server listens there (or it hung up instead
** of welcoming us: it died, or the key was wrong).
*/
int mp_fs_connect(const mp_fs_addr *a, int *conn);

/*
** One child for this client: payload and fds (which stay the caller's) go
** to it. On 0: *pid, the status channel *status_fd (the sentinel) and
** *pidfd (or -1). EPIPE when the server is gone (the connection is then
** useless), ETIMEDOUT when it stopped answering, or the server's fork errno.
*/
int mp_fs_spawn(int conn, const void *payload, size_t len, const int *fds, size_t nfds,
                pid_t *pid, int *status_fd, int *pidfd);

/* Reads the exit status from a status channel: 0 with *wstatus, EAGAIN, or EPIPE (lost). */
int mp_fs_read_status(int status_fd, int *wstatus);

#endif
