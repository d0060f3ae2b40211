// An intrusive doubly linked list: the link lives inside its owner, so linking and
// unlinking allocate nothing and an owner leaves any list in O(1).
#ifndef PORTSPLICE_PS_LIST_H_
#define PORTSPLICE_PS_LIST_H_

namespace ps {

template <typename T>
struct ListLink {
  explicit ListLink(T* owner_ = nullptr) : owner(owner_) {}
  ListLink(const ListLink&) = delete;
  ListLink& operator=(const ListLink&) = delete;

  T* owner;
  ListLink* prev = this;
  ListLink* next = this;

  bool linked() const { return next != this; }

  void unlink() {
    prev->next = next;
    next->prev = prev;
    prev = next = this;
  }
};

template <typename T>
class List {
 public:
  bool empty() const { return !head_.linked(); }

  void push_back(ListLink<T>* link) {
    link->prev = head_.prev;
    link->next = &head_;
    head_.prev->next = link;
    head_.prev = link;
  }

  T* front() const { return empty() ? nullptr : head_.next->owner; }

  // The owner after `link`, or nullptr at the end. Read it before `link` unlinks.
  T* next(const ListLink<T>* link) const { return link->next == &head_ ? nullptr : link->next->owner; }

 private:
  ListLink<T> head_;
};

}  // namespace ps

#endif  // PORTSPLICE_PS_LIST_H_
