// A shared library that is not a lego plugin: it has no lego_plugin_descriptor.
extern "C" __attribute__((visibility("default"))) int something_else() { return 42; }
