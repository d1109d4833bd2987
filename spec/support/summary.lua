-- busted output handler: busted's plain terminal output, then one closing
-- line "busted: N passed, N failed" (errors count as failures) that
-- spec/run adds to the C tests' line.
return function(options)
  local busted = require 'busted'
  local handler = require 'busted.outputHandlers.plainTerminal'(options)
  busted.subscribe({ 'suite', 'end' }, function()
    io.write(('\nbusted: %d passed, %d failed\n'):format(handler.successesCount,
      handler.failuresCount + handler.errorsCount))
    io.flush()
    return nil, true
  end)
  return handler
end
