// Integer status codes that cross the C++/Cython boundary. The Cython layer maps each one
// to a Python exception at once (see raise_status in _native.pyx); C++ never throws.
#pragma once

namespace orloj {
enum Status : int {
  OK = 0,
  ERR_DUPLICATE_ID = 1,  // ValueError: the request id is already queued
  ERR_UNKNOWN_ID = 2,    // KeyError: the request id is not queued
  ERR_EMPTY_DIST = 3,    // ValueError: a distribution without samples
  ERR_NO_DIST = 4,       // ValueError: an app without a distribution
  ERR_BATCH_SIZE = 5,    // ValueError: a batch size outside 1..max_batch
};
}  // namespace orloj
