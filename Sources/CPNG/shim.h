// libpng (Debian: libpng-dev, pkg-config name "libpng"). We use only the simplified png_image_* API,
// which reports errors through png_image.message instead of longjmp, so no setjmp crosses into Swift.
#include <png.h>
