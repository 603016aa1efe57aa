#include <spawn.h>

/// Closes every descriptor from `lowest` up in the spawned child (glibc 2.34+).
int harp_spawn_close_from(posix_spawn_file_actions_t *actions, int lowest);
