/*
** Fault points (see fault.h). The environment is read at each pass: the points
** sit on rare paths of test builds only, and a forked child sees its parent's
** environment, which is what a spec sets.
*/
#include "engine/fault.h"

#ifdef MPLUA_FAULTS
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <errno.h>

void mp_fault(const char *point) {
  const char *spec = getenv("MPLUA_FAULT");
  size_t n = strlen(point);
  while (spec != NULL && *spec != '\0') {
    if (strncmp(spec, point, n) == 0 && spec[n] == '=') {
      double s = strtod(spec + n + 1, NULL);
      if (s > 0) {
        struct timespec ts = { (time_t)s, (long)((s - (double)(time_t)s) * 1e9) };
        while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
          ;
      }
      return;
    }
    spec = strchr(spec, ',');
    if (spec != NULL) spec++;
  }
}
#else
typedef int mp_fault_unused;   /* ISO C wants a declaration in every unit */
#endif
