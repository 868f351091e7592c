/* Fault points for test builds (fault.h). Nothing here in other builds. */
#ifdef MP_FAULTS
#define _GNU_SOURCE
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "fault.h"

#define MAX_POINTS 8

typedef struct point {
  char name[64];
  long when;          /* the hit that acts */
  long hits;
  char action;        /* 'k' kill, 's' stop, 'd' delay */
  double delay;
} point;

static point points[MAX_POINTS];
static int npoints = -1;   /* -1 until MPLUA_FAULT was read */

static void parse(const char *spec) {
  npoints = 0;
  if (spec == NULL) return;
  while (*spec && npoints < MAX_POINTS) {
    const char *end = strchr(spec, ',');
    size_t len = end ? (size_t)(end - spec) : strlen(spec);
    point *p = &points[npoints];
    memset(p, 0, sizeof *p);
    p->when = 1;
    p->action = 'k';
    size_t i = 0;
    while (i < len && spec[i] != '@' && spec[i] != '=' && i < sizeof p->name - 1) {
      p->name[i] = spec[i];
      i++;
    }
    if (i < len && spec[i] == '@') p->when = strtol(spec + i + 1, NULL, 10);
    const char *eq = memchr(spec, '=', len);
    if (eq != NULL) {
      if (strncmp(eq + 1, "stop", 4) == 0) p->action = 's';
      else if (strncmp(eq + 1, "delay:", 6) == 0) { p->action = 'd'; p->delay = strtod(eq + 7, NULL); }
    }
    npoints++;
    spec += len;
    if (*spec == ',') spec++;
  }
}

void mp_fault_arm(const char *spec) { parse(spec); }

void mp_fault_point(const char *name) {
  if (npoints < 0) {
    const char *only = getenv("MPLUA_FAULT_PID");
    parse(only != NULL && atol(only) != (long)getpid() ? NULL : getenv("MPLUA_FAULT"));
  }
  for (int i = 0; i < npoints; i++) {
    point *p = &points[i];
    if (strcmp(p->name, name) != 0 || ++p->hits != p->when) continue;
    if (p->action == 'k') raise(SIGKILL);
    else if (p->action == 's') raise(SIGSTOP);
    else {
      struct timespec ts = { (time_t)p->delay, (long)((p->delay - (double)(time_t)p->delay) * 1e9) };
      while (nanosleep(&ts, &ts) != 0) {}
    }
  }
}
#else
typedef int mp_fault_unused;   /* ISO C: a translation unit is not empty */
#endif
