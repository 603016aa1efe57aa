// Headers only (include/CRelay.h); SwiftPM wants a source file in a C target.
#include "CRelay.h"
